"""shared/logs.py's JsonFormatter: the line it writes field by field is the one json.dumps writes
of the same entry, for any message, name, extra, exception and time."""

import json
import logging
import random
import sys
from datetime import UTC, datetime

from shared.logs import EXTRA_KEYS, JsonFormatter, configure_logging, request_id_var
from shared.redaction import redact

ALPHABET = 'ab "\\/\n\t\x00\x1f\x7f\u00e9\u2028\u03a3\U0001f600=:,}{'


def dumps_line(formatter: JsonFormatter, record: logging.LogRecord) -> str:
    """The line as the formatter wrote it before: a dict through json.dumps."""
    entry = {
        "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
        "level": record.levelname.lower(),
        "service": formatter.service,
        "logger": record.name,
        "request_id": getattr(record, "request_id", None) or request_id_var.get(),
        "msg": record.getMessage(),
    }
    for key in EXTRA_KEYS:
        value = getattr(record, key, None)
        if value is not None:
            entry[key] = str(value)
    if record.exc_info:
        entry["exc"] = formatter.formatException(record.exc_info)
    return redact(json.dumps(entry, ensure_ascii=False, default=str))


def text(rng: random.Random) -> str:
    return "".join(rng.choice(ALPHABET) for _ in range(rng.randrange(0, 12)))


def test_each_line_is_the_one_json_dumps_writes():
    rng = random.Random(20261201)
    for service in ("api", 'odd "service"\n'):
        formatter = JsonFormatter(service)
        for _ in range(2000):
            extra: dict[str, object] = {}
            if rng.random() < 0.7:
                # Our request ids are strings; a message header could hold anything.
                extra["request_id"] = rng.choice(
                    [text(rng) or "r", text(rng) or "r", 42, 1.5, True, ["x", 1], {"k": "v"}]
                )
            for key in EXTRA_KEYS:
                if rng.random() < 0.3:
                    extra[key] = rng.choice([text(rng), 42, 1.5, True, ["x", 1]])
            exc_info = None
            if rng.random() < 0.1:
                try:
                    raise ValueError(text(rng))
                except ValueError:
                    exc_info = sys.exc_info()
            record = logging.getLogger(text(rng) or "dark").makeRecord(
                "dark." + text(rng),
                rng.choice([logging.INFO, logging.WARNING, 25]),
                "(unknown file)",
                0,
                "%s and %d " + text(rng),
                (text(rng), rng.randrange(-5, 5)),
                exc_info,
                extra=extra,
            )
            # Any time of day, including fractions that round up to the next second.
            record.created = rng.choice(
                [rng.uniform(0, 4e9), rng.randrange(0, 4_000_000_000) + 0.9999996, 1.0]
            )
            token = request_id_var.set(rng.choice([None, text(rng) or "ctx"]))
            try:
                assert formatter.format(record) == dumps_line(formatter, record)
            finally:
                request_id_var.reset(token)


def test_a_secret_in_the_line_is_still_masked():
    formatter = JsonFormatter("api")
    record = logging.getLogger("dark").makeRecord(
        "dark", logging.INFO, "f", 0, "token=%s", ("hvs.0123456789abcdefghijKL",), None
    )
    line = formatter.format(record)
    assert "0123456789abcdefghij" not in line
    assert json.loads(line)["msg"] == "token=***"


def test_configuring_the_json_lines_keeps_thread_and_process_names_for_other_handlers():
    # Celery's own handlers (its pool children's error lines) write processName.
    saved = (logging.getLogger().handlers[:], logging.getLogger().level, logging._srcfile)
    try:
        configure_logging("provisioner")
        record = logging.getLogger("x").makeRecord("x", logging.INFO, "f", 0, "m", (), None)
        assert record.processName == "MainProcess"
        assert record.process is not None and record.threadName is not None
    finally:
        root = logging.getLogger()
        root.handlers[:], level, logging._srcfile = saved
        root.setLevel(level)
