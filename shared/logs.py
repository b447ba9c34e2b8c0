"""Structured logging: one JSON object per line, a request id on every line, secrets masked
(`shared.redaction.redact` over the whole line)."""

import contextvars
import json
import logging
import os
import re
import sys
from datetime import UTC, datetime
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


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service
        # One encoder for every line: json.dumps with any option set builds a new one per call.
        self._encode = json.JSONEncoder(ensure_ascii=False, default=str).encode

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "service": self.service,
            "logger": record.name,
            "request_id": getattr(record, "request_id", None) or request_id_var.get(),
            "msg": record.getMessage(),
        }
        for key in ("instance_id", "tenant", "task", "step", "status"):
            value = getattr(record, key, None)
            if value is not None:
                entry[key] = str(value)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return redact(self._encode(entry))


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
    # No record needs its caller's file and line, nor its thread's or process's name
    # (JsonFormatter writes none of them): without these, every record walks the stack and looks
    # them up (the logging HOWTO's "Optimization").
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Libraries that log request or response bodies at INFO/DEBUG stay at WARNING.
    for noisy in ("urllib3", "yandexcloud", "grpc", "hvac", "werkzeug"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
