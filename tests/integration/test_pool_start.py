"""A worker node whose pool child is killed while the pool starts keeps running.

Found by the chaos suite (seed 232781, in CI): a pool child SIGKILLed in the moment between the
worker's "ready" and Celery's check that its pool started (`did_start_ok`) made the whole node exit
("Unrecoverable error: WorkerLostError('Could not start worker processes')"). The check is there
for children that cannot start (an import error, a crash); a child killed from outside did start,
and the pool replaces it as it replaces any other.
"""

import sys
import time

from celery import Celery

from tests.support.processes import spawn, stop_process, wait_until


def test_a_child_killed_while_the_pool_starts_does_not_take_the_node_down(redis_url, tmp_path):
    mark, echoed, log = tmp_path / "killed", tmp_path / "echoed", tmp_path / "worker.log"
    env = {
        "DARK_TEST_BROKER": redis_url,
        "DARK_TEST_KILL_MARK": str(mark),
        "DARK_TEST_ECHO_FILE": str(echoed),
    }
    argv = [sys.executable, "-m", "celery", "-A", "tests.support.celery_pool_app", "worker"]
    worker = spawn(
        [*argv, "-P", "prefork", "-c", "2", "--loglevel=INFO", "-Q", "dark.test.pool-start"],
        env=env,
        log_path=log,
    )
    try:
        wait_until(mark.exists, 30, what="a pool child to be killed")
        wait_until(lambda: "ready." in log.read_text() or worker.poll() is not None, 30)
        time.sleep(2)  # past Celery's start check, which comes right after "ready."
        assert "Unrecoverable error" not in log.read_text(), log.read_text()[-2000:]
        assert worker.poll() is None, log.read_text()[-2000:]
        # The pool still works: a task sent now is run.
        sender = Celery(broker=redis_url)
        sender.send_task("dark.test.echo", args=["after"], queue="dark.test.pool-start")
        wait_until(lambda: echoed.exists() and "after" in echoed.read_text(), 30, what="the task")
        assert worker.poll() is None
    finally:
        stop_process(worker)
