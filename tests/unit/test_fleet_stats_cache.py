"""CachedFleetStats: /metrics' fleet figures are computed at most once every 15 s per process, and
concurrent scrapes wait for the one computation instead of each querying Postgres."""

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from shared.adapters.fleet_stats import MAX_AGE_SECS, CachedFleetStats, FleetStats
from shared.domain.errors import RegistryUnavailable


class CountingSource:
    def __init__(self, *, fail: bool = False, gate: threading.Event | None = None) -> None:
        self.calls = 0
        self.fail = fail
        self.gate = gate

    def snapshot(self) -> FleetStats:
        self.calls += 1
        if self.gate is not None:
            assert self.gate.wait(5)
        if self.fail:
            raise RegistryUnavailable("the registry database did not answer")
        return FleetStats({"ready": self.calls}, {}, {}, {}, {})


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_figures_are_recomputed_only_once_they_are_15_s_old():
    assert MAX_AGE_SECS == 15
    source, clock = CountingSource(), Clock()
    cached = CachedFleetStats(source, clock=clock)
    assert cached.snapshot().instances_by_status == {"ready": 1}
    clock.now += 14.9
    assert cached.snapshot().instances_by_status == {"ready": 1}
    assert source.calls == 1
    clock.now += 0.1
    assert cached.snapshot().instances_by_status == {"ready": 2}
    assert source.calls == 2


def test_a_database_that_did_not_answer_is_asked_again_only_15_s_later():
    source, clock = CountingSource(fail=True), Clock()
    cached = CachedFleetStats(source, clock=clock)
    for _ in range(3):
        with pytest.raises(RegistryUnavailable):
            cached.snapshot()
    assert source.calls == 1
    source.fail = False
    clock.now += 15
    assert cached.snapshot().instances_by_status == {"ready": 2}


def test_concurrent_scrapes_compute_once():
    gate = threading.Event()
    source = CountingSource(gate=gate)
    cached = CachedFleetStats(source)
    with ThreadPoolExecutor(8) as pool:
        answers = [pool.submit(cached.snapshot) for _ in range(8)]
        gate.set()
        results = [answer.result(timeout=5) for answer in answers]
    assert source.calls == 1
    assert {r.instances_by_status["ready"] for r in results} == {1}
