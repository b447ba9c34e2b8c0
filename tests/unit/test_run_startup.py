"""`make run` while starting: a process that exits stops the wait at once with the end of its log,
and a port already taken is named with what to do."""

import socket
import sys
import time

import pytest

from devtools import run


def test_a_process_that_exits_while_starting_stops_the_wait_with_its_log(tmp_path, monkeypatch):
    monkeypatch.setattr(run, "RUN", tmp_path)
    runner = run.Runner()
    script = (
        "import sys; print('line 1'); print('Address already in use', file=sys.stderr); sys.exit(3)"
    )
    runner.start("api", [sys.executable, "-c", script], {})
    started = time.monotonic()
    try:
        with pytest.raises(SystemExit) as stopped:
            run._wait("the gateway", lambda: False, timeout=60, runner=runner)
    finally:
        runner.stop()
    assert time.monotonic() - started < 10
    message = str(stopped.value.code)
    assert "api exited (3) while starting" in message
    assert "Address already in use" in message


def test_the_last_lines_of_a_log_only(tmp_path, monkeypatch):
    monkeypatch.setattr(run, "RUN", tmp_path)
    (tmp_path / "x.log").write_text("".join(f"line {i}\n" for i in range(100)))
    tail = run.log_tail("x", lines=3)
    assert tail.splitlines() == ["    line 97", "    line 98", "    line 99"]


def test_a_taken_port_is_named_with_its_variable():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        problem = run._port_problem("DARK_BIND", f"127.0.0.1:{port}")
    assert problem is not None and f"port {port} (DARK_BIND=127.0.0.1:{port}) is taken" in problem
    assert run._port_problem("DARK_BIND", "127.0.0.1:0") is None


def test_a_password_in_a_url_is_not_repeated():
    shown = run._without_password("postgresql://dark:s3cret@db:5432/dark")
    assert shown == "postgresql://dark:***@db:5432/dark"
