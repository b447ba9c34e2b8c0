"""Structured logging: one JSON object per line, a request id on every line, secrets masked
(`shared.redaction.redact` over the whole line)."""

import contextvars
import json
import logging
import math
import os
import re
import sys
import time
from typing import Any

from shared.redaction import redact

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "request_id", default=None
)

# `\Z`, not `$`, which would also accept a trailing newline.
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}\Z")


def new_request_id(candidate: str | None = None) -> str:
    """The caller's id when it is well-formed, else a fresh one."""
    if candidate and _REQUEST_ID.match(candidate):
        return candidate
    # 128 random bits in 32 hex digits, as uuid4().hex would give without building a UUID.
    return os.urandom(16).hex()


# A string as a JSON string, non-ASCII kept: the encoder's fast path for a str, no encoder per call.
_json_string = json.JSONEncoder(ensure_ascii=False).encode


def _json_value(value: object) -> str:
    # A str (every request id we make) and None (a line outside a request) the fast way; anything
    # else as json.dumps writes it.
    if isinstance(value, str):
        return _json_string(value)
    if value is None:
        return "null"
    return json.dumps(value, ensure_ascii=False, default=str)


# The record attributes a line carries when set (`extra=`), in this order.
EXTRA_KEYS = ("instance_id", "tenant", "task", "step", "status")


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ts (UTC, milliseconds), level, service, logger, request_id,
    msg, then whichever of EXTRA_KEYS the record has and its exception (as strings); secrets
    masked over the whole line.

    The line is written field by field, each value through json's own string encoder: the same
    text `json.dumps(entry, ensure_ascii=False)` gives, without building a dict and an encoder
    for every line (one per request at the gateway).
    """

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service
        self._prefix = f', "service": {_json_string(service)}, "logger": '
        # (whole second, its text): swapped as one object, so threads never pair a second with
        # another second's text.
        self._second: tuple[int, str] = (-1, "")

    def format(self, record: logging.LogRecord) -> str:
        request_id = getattr(record, "request_id", None) or request_id_var.get()
        fields = record.__dict__
        parts = [
            '{"ts": "',
            self._timestamp(record.created),
            '", "level": ',
            _json_string(record.levelname.lower()),
            self._prefix,
            _json_string(record.name),
            ', "request_id": ',
            _json_value(request_id),
            ', "msg": ',
            _json_string(record.getMessage()),
        ]
        for key in EXTRA_KEYS:
            value = fields.get(key)
            if value is not None:
                parts += (', "', key, '": ', _json_string(str(value)))
        if record.exc_info:
            parts += (', "exc": ', _json_string(self.formatException(record.exc_info)))
        parts.append("}")
        return redact("".join(parts))

    def _timestamp(self, created: float) -> str:
        """`created` as datetime's isoformat(timespec="milliseconds") in UTC writes it (the same
        rounding to microseconds first); the date and time of day once per second."""
        fraction, whole = math.modf(created)
        second, micros = int(whole), round(fraction * 1_000_000)
        if micros >= 1_000_000:
            second, micros = second + 1, micros - 1_000_000
        elif micros < 0:
            second, micros = second - 1, micros + 1_000_000
        cached = self._second
        if cached[0] != second:
            cached = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
            self._second = cached
        return f"{cached[1]}.{micros // 1000:03d}+00:00"


def gunicorn_logconfig(service: str) -> dict[str, Any]:
    """Gunicorn's `logconfig_dict`: its own lines in the same JSON shape as the app's, and no
    access log (the app writes one line per request itself, never with headers)."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": "shared.logs.JsonFormatter", "service": service}},
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


def configure_logging(service: str, level: str = "INFO") -> None:
    """Replace the root handlers with one JSON line handler on stderr."""
    # No record needs its caller's file and line (JsonFormatter writes neither): without this,
    # every record walks the stack to find them (the logging HOWTO's "Optimization"). Thread and
    # process names stay: Celery's own handlers (the pool's children) write processName.
    logging._srcfile = None
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Libraries that log request or response bodies at INFO/DEBUG stay at WARNING.
    for noisy in ("urllib3", "yandexcloud", "grpc", "hvac", "werkzeug"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
