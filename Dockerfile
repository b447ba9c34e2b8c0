# One image for every Python process of dark-orchestrator; docker-compose.yml gives each service
# its command (gateway, onboarding, provisioner worker, reconcile worker, beat, Flower, migrations,
# the OpenBao set-up and, in the demo profile, the simulators).
#
# No secret is baked in: no ARG or ENV holds one, .dockerignore keeps .env, .run/ and key files
# out of the build context, and every credential arrives at run time from the environment
# (docker-compose.yml reads it from .env).

# --- build: the runtime lock in a virtual environment --------------------------------------------
FROM python:3.11-slim-bookworm AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv
# The runtime lock only (pyproject.toml's dependencies, every one pinned and hashed): no test tool,
# linter, browser driver or OpenBao binary (requirements/dev.txt) reaches the image.
COPY requirements/runtime.txt /tmp/runtime.txt
# Every pin has a manylinux wheel for CPython 3.11, so no compiler is needed here.
RUN /opt/venv/bin/pip install --no-compile --require-hashes -r /tmp/runtime.txt

# --- runtime -------------------------------------------------------------------------------------
FROM python:3.11-slim-bookworm

LABEL org.opencontainers.image.title="dark-orchestrator" \
      org.opencontainers.image.description="Control plane for per-tenant dark-agent VMs"

# A fixed, unprivileged uid/gid: bind-mounted files (the YC service-account key) can be granted to
# it by number, and runtimes that check runAsNonRoot see a numeric USER. The two directories are
# mount points of named volumes the services write to: a new volume takes the ownership of the
# directory it is mounted over.
ARG APP_UID=10001
RUN groupadd --system --gid "${APP_UID}" dark \
    && useradd --system --uid "${APP_UID}" --gid dark --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin dark \
    && install -d -o dark -g dark -m 0700 /var/lib/dark/openbao-init \
    && install -d -o dark -g dark -m 0755 /var/lib/dark/sim

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONPATH=/app \
    HOME=/tmp \
    GRPC_VERBOSITY=ERROR \
    # The gateway listens on every interface of its container: compose need not say so.
    DARK_BIND=0.0.0.0:8080

COPY --from=build /opt/venv /opt/venv
WORKDIR /app
# The code stays owned by root: the service user can read it, not change it.
COPY . /app

USER ${APP_UID}:${APP_UID}

EXPOSE 8080 8081 5555
# The gateway by default; docker-compose.yml sets each service's command.
CMD ["gunicorn", "-c", "services/api/gunicorn.conf.py", "services.api.wsgi:app"]
