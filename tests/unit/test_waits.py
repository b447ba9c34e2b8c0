"""Waiting for an instance (shared/service_layer/waits.py) over a fake registry and a fake clock:
what it answers, when it stops, and the per-process cap on open waits."""

import threading

import pytest

from shared.domain.lifecycle import Status
from shared.domain.tenants import TenantName
from shared.service_layer.waits import OpenWaits, TooManyWaits, wait_for_status
from tests.fakes import FakeRegistry


class Clock:
    """A clock that moves only when the wait sleeps; `on_sleep` runs after each sleep."""

    def __init__(self, on_sleep=lambda now: None) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []
        self.on_sleep = on_sleep

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        self.on_sleep(self.now)


def pending(registry: FakeRegistry):
    instance, _ = registry.create(TenantName("acme"))
    return instance


def wait(registry, instance, wanted, timeout, clock):
    return wait_for_status(
        registry, instance, wanted, timeout, poll=0.5, clock=clock, sleep=clock.sleep
    )


def test_a_wait_answers_as_soon_as_the_instance_reaches_a_wanted_status():
    registry = FakeRegistry()
    instance = pending(registry)

    def advance(now):
        if now == 1.0:
            registry.transition(instance.id, Status.PENDING, Status.PROVISIONING)
        if now == 2.0:
            registry.transition(instance.id, Status.PROVISIONING, Status.INITIALIZING)

    clock = Clock(advance)
    outcome = wait(registry, instance, {Status.INITIALIZING, Status.READY}, 60, clock)
    assert outcome.reached is True
    assert outcome.instance.status is Status.INITIALIZING
    assert clock.now == 2.0  # four polls of half a second, not the whole minute


def test_a_wait_for_ready_stops_when_the_instance_fails():
    registry = FakeRegistry()
    instance = pending(registry)

    def fail(now):
        if now == 1.5:
            registry.transition(instance.id, Status.PENDING, Status.FAILED, "no capacity")

    clock = Clock(fail)
    outcome = wait(registry, instance, {Status.READY}, 60, clock)
    assert (outcome.reached, outcome.instance.status, clock.now) == (False, Status.FAILED, 1.5)


def test_a_wait_answers_at_the_timeout_with_the_state_as_it_is():
    registry = FakeRegistry()
    instance = pending(registry)
    clock = Clock()
    outcome = wait(registry, instance, {Status.READY}, 1.2, clock)
    assert (outcome.reached, outcome.instance.status) == (False, Status.PENDING)
    assert clock.sleeps == [0.5, 0.5, pytest.approx(0.2)]  # never past the deadline


def test_an_instance_already_in_a_wanted_status_is_answered_without_sleeping():
    registry = FakeRegistry()
    instance = pending(registry)
    clock = Clock()
    outcome = wait(registry, instance, {Status.PENDING}, 60, clock)
    assert outcome.reached is True and clock.sleeps == []


def test_open_waits_refuses_one_over_the_limit_and_frees_slots_as_waits_end():
    waits = OpenWaits(2)
    with waits.slot(), waits.slot():
        assert waits.open == 2
        with pytest.raises(TooManyWaits), waits.slot():
            pass
    assert waits.open == 0
    with waits.slot():
        assert waits.open == 1


def test_open_waits_counts_exactly_under_concurrent_threads():
    waits = OpenWaits(5)
    barrier = threading.Barrier(20)
    admitted: list[bool] = []
    release = threading.Event()

    def try_one():
        barrier.wait()
        try:
            with waits.slot():
                admitted.append(True)
                release.wait(5)
        except TooManyWaits:
            admitted.append(False)

    threads = [threading.Thread(target=try_one) for _ in range(20)]
    for thread in threads:
        thread.start()
    while len(admitted) < 20 and admitted.count(False) < 15:
        threading.Event().wait(0.01)
    release.set()
    for thread in threads:
        thread.join(5)
    assert admitted.count(True) == 5 and waits.open == 0
