"""Structured logging: one JSON object per line, a request id on every line, secrets masked.

Masking is the second line of defence. The first is that secret-bearing values are never passed to
a logger at all (they travel as `Secret`/`Bundle`, whose repr is masked).
"""

import contextvars
import json
import logging
import re
import sys
import uuid
from datetime import UTC, datetime

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "request_id", default=None
)

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")

# Values that look like credentials, wherever they appear in a message.
_PATTERNS = [
    re.compile(r"sk-ant-[A-Za-z0-9]{2,8}-[A-Za-z0-9_\-]{4,}"),  # Anthropic / Claude tokens
    re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=\-]{8,}"),
    re.compile(r"\b(?:hvs|hvb|hvr|s)\.[A-Za-z0-9_\-]{20,}"),  # Vault / OpenBao tokens
    re.compile(r"\b(?:ghp|gho|ghu|ghs|ghr|github_pat|glpat)[_-][A-Za-z0-9_\-]{10,}"),
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?(?:-----END [A-Z ]*PRIVATE KEY-----|$)"),
    # key=value / "key": "value" pairs whose key names a secret
    re.compile(
        r"(?i)([\"']?\b[\w-]*(?:token|pat|secret|password|passwd|bundle|private_key|authorization)"
        r"[\w-]*[\"']?\s*[:=]\s*[\"']?)([^\"'\s,}&]+)"
    ),
]


def redact(text: str) -> str:
    for pattern in _PATTERNS:
        if pattern.groups:
            text = pattern.sub(lambda m: m.group(1) + "***", text)
        else:
            text = pattern.sub("***", text)
    return text


def new_request_id(candidate: str | None = None) -> str:
    """The caller's id when it is well-formed, else a fresh one."""
    if candidate and _REQUEST_ID.match(candidate):
        return candidate
    return uuid.uuid4().hex


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

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
        return redact(json.dumps(entry, ensure_ascii=False, default=str))


def gunicorn_logconfig(service: str) -> dict:
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
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Libraries that log request or response bodies at INFO/DEBUG stay at WARNING.
    for noisy in ("urllib3", "yandexcloud", "grpc", "hvac", "werkzeug"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
