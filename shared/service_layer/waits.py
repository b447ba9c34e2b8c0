"""Waiting for an instance to reach a status: the logic behind GET /instances/<tenant>/<id>/wait.

A wait re-reads the row every WAIT_POLL_SECS and holds no database connection in between: each
read borrows one from the pool for a primary-key lookup and gives it back. Polling was chosen over
LISTEN/NOTIFY: NOTIFY would need every writer of a transition (the gateway, the workers, reconcile)
to send one, plus a listening connection and a dispatcher thread per gateway process; a wait is
rare (a person or a script following one VM) and half a second of delay is invisible next to a
VM's boot, while 50 open waits cost 100 indexed reads a second.

A wait occupies a gateway thread, so a process caps how many are open at once (`OpenWaits`); the
gateway's thread count is that cap plus a reserve (services/api/gunicorn.conf.py), so that waits
can never take the threads other requests are served by.
"""

import contextlib
import threading
import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass

from shared.domain.lifecycle import Status
from shared.domain.records import Instance
from shared.ports import FleetRegistry

WAIT_POLL_SECS = 0.5
MAX_WAIT_SECS = 60
# Statuses an instance does not leave on its own: waiting longer for another one is pointless.
SETTLED = frozenset({Status.FAILED, Status.RETIRED, Status.LOST})


class TooManyWaits(Exception):
    """This process already holds as many open waits as it may."""


class OpenWaits:
    """A per-process count of open waits, refusing one over `limit` rather than queueing it."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._open = 0
        self._lock = threading.Lock()

    @property
    def open(self) -> int:
        return self._open

    @contextlib.contextmanager
    def slot(self) -> Iterator[None]:
        with self._lock:
            if self._open >= self.limit:
                raise TooManyWaits(f"{self._open} waits are open in this process")
            self._open += 1
        try:
            yield
        finally:
            with self._lock:
                self._open -= 1


@dataclass(frozen=True)
class WaitOutcome:
    instance: Instance
    reached: bool  # the instance is in one of the wanted statuses


def wait_for_status(
    registry: FleetRegistry,
    instance: Instance,
    wanted: Collection[Status],
    timeout: float,
    *,
    poll: float = WAIT_POLL_SECS,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> WaitOutcome:
    """Re-read `instance` until its status is one of `wanted` or settled, or `timeout` seconds
    pass; the outcome holds the instance as last read."""
    wanted = frozenset(wanted)
    deadline = clock() + timeout
    while True:
        if instance.status in wanted or instance.status in SETTLED:
            break
        remaining = deadline - clock()
        if remaining <= 0:
            break
        sleep(min(poll, remaining))
        current = registry.get(instance.id)
        if current is None:  # removed behind our back: the last state seen is the answer
            break
        instance = current
    return WaitOutcome(instance=instance, reached=instance.status in wanted)
