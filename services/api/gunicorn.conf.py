"""Gunicorn settings for the gateway. Read by `gunicorn -c services/api/gunicorn.conf.py`.

The bind address comes from DARK_BIND through the same settings loader as everything else, so a
bad value fails at start with the variable's name.
"""

from shared.settings import load_settings

bind = [load_settings().api_bind]
workers = 2
# Threads let one worker serve other requests while a view waits on a slow guest (up to 2 s) or
# on Postgres.
threads = 4
timeout = 30
graceful_timeout = 20
# The app is built in each worker after fork: a connection pool must not be shared across fork.
preload_app = False
# Gunicorn's control socket defaults to one path per user ($HOME/.gunicorn/gunicorn.ctl), which two
# gateways on one machine (tests, `make run`) would fight over; nothing here uses gunicornc.
control_socket_disable = True

# Gunicorn's own lines in the same JSON shape as the app's; no access log, because the app writes
# one line per request itself (method, route, status, duration, request id) and never headers, so
# the Authorization header cannot reach a log.
accesslog = None
logconfig_dict = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"json": {"()": "shared.logs.JsonFormatter", "service": "api"}},
    "handlers": {
        "stderr": {
            "class": "logging.StreamHandler",
            "formatter": "json",
            "stream": "ext://sys.stderr",
        },
        "discard": {"class": "logging.NullHandler"},
    },
    "root": {"level": "INFO", "handlers": ["stderr"]},
    "loggers": {
        "gunicorn.error": {"level": "INFO", "handlers": ["stderr"], "propagate": False},
        "gunicorn.access": {"level": "INFO", "handlers": ["discard"], "propagate": False},
    },
}
