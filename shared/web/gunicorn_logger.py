"""Gunicorn's logger for the HTTP services: its own lines as usual, no access line.

The app writes one line per request itself (shared/web/hooks.py: method, route, status, duration,
request id, never a header). Gunicorn's stock logger, once a logging dict is configured, builds its
access line's atoms and a log record for every request even when the access logger discards it:
about a twentieth of a short request's time in the worker.
"""

from typing import Any

from gunicorn.glogging import Logger  # type: ignore[import-untyped]


class GunicornLogger(Logger):  # type: ignore[misc]
    # Read by gunicorn's protocol handlers to skip building access data.
    access_log_enabled = False

    def access(self, resp: Any, req: Any, environ: Any, request_time: Any) -> None:
        return None
