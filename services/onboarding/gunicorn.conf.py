"""Gunicorn settings for the onboarding service. Read by `gunicorn -c
services/onboarding/gunicorn.conf.py`.

The bind address comes from DARK_ONBOARDING_BIND through the same settings loader as everything
else, so a bad value fails at start with the variable's name.
"""

from shared.logs import gunicorn_logconfig
from shared.settings import load_settings

bind = [load_settings(service="onboarding").onboarding_bind]
# Onboarding is low-traffic; threads cover a request waiting on Vault or Postgres.
workers = 2
threads = 4
timeout = 30
graceful_timeout = 20
# The app is built in each worker after fork: a connection pool must not be shared across fork.
preload_app = False
# Gunicorn's control socket defaults to one path per user ($HOME/.gunicorn/gunicorn.ctl), which two
# services on one machine (tests, `make run`) would fight over; nothing here uses gunicornc.
control_socket_disable = True

# Gunicorn's own lines in the same JSON shape as the app's; no access log, because the app writes
# one line per request itself (method, route, status, duration, request id) and never headers or
# bodies, so neither the Authorization header nor a submitted secret can reach a log.
accesslog = None
logconfig_dict = gunicorn_logconfig("onboarding")
# ...and no access line built only to be discarded (shared/web/gunicorn_logger.py).
logger_class = "shared.web.gunicorn_logger.GunicornLogger"
