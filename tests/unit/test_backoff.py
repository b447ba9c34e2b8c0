"""Retry backoff (DESIGN §4: backoff everywhere uses full jitter, with a cap)."""

import pytest

from shared.service_layer.retry import MAX_BACKOFF_SECS, backoff


@pytest.mark.parametrize("attempt", [3, 5, 12, 1000])
def test_backoff_for_one_attempt_spreads_over_zero_to_its_ceiling(attempt):
    ceiling = min(MAX_BACKOFF_SECS, 2.0**attempt)

    delays = [backoff(attempt) for _ in range(2000)]

    assert all(0 <= delay <= ceiling for delay in delays)
    assert len(set(delays)) > 5  # a fleet retrying after one outage does not move in lockstep
    assert min(delays) < ceiling / 4
    assert max(delays) > ceiling * 3 / 4


def test_backoff_never_exceeds_the_cap():
    assert max(backoff(attempt) for attempt in range(0, 64) for _ in range(50)) <= MAX_BACKOFF_SECS
