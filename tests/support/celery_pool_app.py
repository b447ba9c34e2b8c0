"""A minimal Celery app for tests/integration/test_pool_start.py: the project's Celery guards
installed (shared.celery_app), one task, and a pool child that SIGKILLs itself while the pool
starts, once (the first child to claim DARK_TEST_KILL_MARK), as the OOM killer or an operator might.
"""

import os
import signal

from celery import Celery
from celery.signals import worker_process_init

import shared.celery_app  # noqa: F401 (installs the guards)

app = Celery("pool-start-test", broker=os.environ["DARK_TEST_BROKER"])
app.conf.task_default_queue = "dark.test.pool-start"


@app.task(name="dark.test.echo")
def echo(value: str) -> str:
    with open(os.environ["DARK_TEST_ECHO_FILE"], "a") as out:
        out.write(value + "\n")
    return value


@worker_process_init.connect
def _killed_while_starting(**_kwargs) -> None:
    try:
        fd = os.open(os.environ["DARK_TEST_KILL_MARK"], os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return
    os.close(fd)
    os.kill(os.getpid(), signal.SIGKILL)
