"""Gunicorn settings for the gateway. Read by `gunicorn -c services/api/gunicorn.conf.py`.

The bind address comes from DARK_BIND through the same settings loader as everything else, so a
bad value fails at start with the variable's name.
"""

import os
import shutil
import tempfile

from shared.logs import gunicorn_logconfig
from shared.settings import load_settings

_settings = load_settings(service="api")
bind = [_settings.api_bind]
workers = 2
# Threads let one worker serve other requests while a view waits on a slow guest (up to 2 s) or
# on Postgres. GET .../wait holds a thread for up to a minute, asleep between reads of the row:
# each process takes at most DARK_MAX_OPEN_WAITS of them (429 beyond), and has that many threads
# plus a reserve that waits can never occupy, so other requests are served as usual. A sleeping
# thread costs memory only. (gevent would also do, but psycopg and the pool are thread-based and
# the gRPC-free gateway gains nothing else from it.)
REQUEST_THREADS = 8
threads = _settings.max_open_waits + REQUEST_THREADS
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
logconfig_dict = gunicorn_logconfig("api")
# ...and no access line built only to be discarded (shared/web/gunicorn_logger.py).
logger_class = "shared.web.gunicorn_logger.GunicornLogger"


# --- /metrics across workers (services/api/metrics.py) ------------------------------------------
# prometheus_client keeps each worker's samples in files under PROMETHEUS_MULTIPROC_DIR, and a
# scrape, whichever worker answers it, adds them all up. The library decides on that mode when it
# is first imported, so the variable is set here in the master, before any worker imports it, and
# this module imports prometheus_client only inside a hook. An operator-set directory is used as it
# is (empty it before each start: counts left there would be added to the new ones); otherwise each
# start gets a fresh private one, removed at exit.
_private_metrics_dirs: list[str] = []


def on_starting(_server) -> None:
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        path = tempfile.mkdtemp(prefix="dark-api-metrics-")
        _private_metrics_dirs.append(path)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = path


def child_exit(_server, worker) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(_server) -> None:
    for path in _private_metrics_dirs:
        shutil.rmtree(path, ignore_errors=True)
