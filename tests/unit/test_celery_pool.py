"""The prefork pool survives a broker reconnect that finds a pool child already gone.

Found by the chaos suite (seed 9005): a child SIGKILLed while Redis was restarting was untracked by
the pool (its sentinel set to None) but still listed when the consumer re-registered the pool with
the new event loop; Celery 5.7 then handed None to kombu, whose ValueError is not among the errors
Celery's `iterate_file_descriptors_safely` tolerates, and the whole worker node exited
("Unrecoverable error: ValueError('file descriptor is None')").
"""

from types import SimpleNamespace

from celery.concurrency.asynpool import AsynPool
from kombu.asynchronous import Hub

import shared.celery_app  # noqa: F401 (installs the guard)


def test_registering_a_child_that_already_exited_is_skipped_not_fatal():
    hub = Hub()
    exited = SimpleNamespace(_sentinel_poll=None, pid=12345)
    try:
        pool = SimpleNamespace(_event_process_exit=lambda *args: None)
        AsynPool._track_child_process(pool, exited, hub)
        assert not hub.readers, "an exited child's missing sentinel must not be watched"
    finally:
        hub.close()
