"""The retry policy: how long to wait before trying again after a failure."""

import random

MAX_BACKOFF_SECS = 30.0


def backoff(attempt: int) -> float:
    """Seconds before retry `attempt`: anywhere from 0 to min(cap, 2^attempt) (full jitter), so
    that the workers retrying after one outage do not all come back at the same moment."""
    ceiling = int(min(MAX_BACKOFF_SECS, 2 ** max(0, min(attempt, 32))))
    return float(random.randint(0, ceiling))  # noqa: S311 (spreading retries, not a secret)
