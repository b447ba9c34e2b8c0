"""The retry policy: how long to wait before trying again after a failure."""

from celery.utils.time import get_exponential_backoff_interval

MAX_BACKOFF_SECS = 30.0


def backoff(attempt: int) -> float:
    """Seconds before retry `attempt`: anywhere from 0 to min(cap, 2^attempt) (full jitter), so
    that the workers retrying after one outage do not all come back at the same moment."""
    return float(
        get_exponential_backoff_interval(
            factor=1, retries=max(0, attempt), maximum=int(MAX_BACKOFF_SECS), full_jitter=True
        )
    )
