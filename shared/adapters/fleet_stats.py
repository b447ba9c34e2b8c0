"""Fleet statistics on Postgres, for the gateway's /metrics (services/api/metrics.py).

Every figure is one aggregate query: Postgres counts, sums and buckets, and Python receives a few
rows per status or kind, never a row per instance or event. The time spent in each status comes
from consecutive events of one instance (a window function), so nothing beyond the event log
(migrations/0001) is kept for it.

A scrape can never take the API's connections: PostgresFleetStats owns one connection of its own
(never the gateway's pool), opened on first use, with a short connect timeout, and its queries run
in one read-only transaction under a budget of QUERY_BUDGET_SECS in all (each statement's timeout
is what is left of it). A slow database makes a scrape report the database down, never makes it
hang. CachedFleetStats computes the figures at most once every MAX_AGE_SECS, whatever the number of
scrapes, per process: gunicorn's workers each keep their own cache and their own connection, and
the threads of one worker share them under a lock, so concurrent scrapes compute once.
"""

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import psycopg
from psycopg import sql

from shared.adapters.capacity import IN_USE, QUEUE, STATUS_PARAMS
from shared.domain.errors import RegistryUnavailable

# From a simulated pipeline step (under a second) to a VM kept for a week: upper bounds in seconds.
STATUS_DURATION_BUCKETS = (
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
    1800.0,
    3600.0,
    21600.0,
    86400.0,
    604800.0,
)
# Seconds to open the connection (libpq honours nothing under 2), and for all of a snapshot's
# queries together.
CONNECT_TIMEOUT_SECS = 2
QUERY_BUDGET_SECS = 3
# The figures are computed at most this often per process; a scrape in between reads the last ones.
MAX_AGE_SECS = 15.0
APPLICATION_NAME = "dark-metrics"


@dataclass(frozen=True)
class DurationHistogram:
    """Cumulative counts per bound of STATUS_DURATION_BUCKETS, the total count and the sum."""

    cumulative: tuple[int, ...]
    count: int
    total_secs: float


@dataclass(frozen=True)
class FleetStats:
    instances_by_status: dict[str, int]
    # (from status — None for a creation —, to status) → number of such transitions
    transitions: dict[tuple[str | None, str], int]
    # status → how long instances stayed in it before leaving it
    status_durations: dict[str, DurationHistogram]
    # action kind → actions taken by reconcile runs that were not dry runs
    reconcile_actions: dict[str, int]
    # dry_run → number of runs
    reconcile_runs: dict[bool, int]
    # the newest finished run that was not a dry run (a dry run changes nothing, so it neither
    # raises nor clears this): refused (over RECONCILE_MAX_DESTRUCTIVE), and how many actions it
    # held back; False and 0 before the first such run
    reconcile_refused: bool = False
    reconcile_held_back: int = 0
    # the cloud operation budget (shared/adapters/capacity.py): slots in use, and pending rows
    # waiting for one
    operations_in_flight: int = 0
    waiting_for_capacity: int = 0


_INSTANCES_BY_STATUS = "SELECT status, count(*) FROM instances GROUP BY status"
_TRANSITIONS = (
    "SELECT from_status, to_status, count(*) FROM instance_events GROUP BY from_status, to_status"
)
# An event's status lasted until the instance's next event; the latest event of each instance is
# its current status, not yet left, and has no duration.
_STATUS_DURATIONS = sql.SQL(
    "WITH spans AS ("
    " SELECT to_status AS status, extract(epoch FROM"
    "  lead(at) OVER (PARTITION BY instance_id ORDER BY id) - at)::float8 AS secs"
    " FROM instance_events)"
    " SELECT status, count(*), sum(secs), {cumulative} FROM spans"
    " WHERE secs IS NOT NULL GROUP BY status"
).format(
    cumulative=sql.SQL(", ").join(
        sql.SQL("count(*) FILTER (WHERE secs <= {})").format(sql.Literal(bound))
        for bound in STATUS_DURATION_BUCKETS
    )
)
_RECONCILE_ACTIONS = (
    "SELECT action ->> 'kind', count(*)"
    " FROM reconcile_runs, jsonb_array_elements(actions) AS action"
    " WHERE NOT dry_run AND NOT coalesce((action ->> 'held_back')::boolean, false) GROUP BY 1"
)
_NEWEST_FINISHED_RUN = (
    "SELECT outcome = 'refused', coalesce((counts ->> 'held_back')::int, 0) FROM reconcile_runs"
    " WHERE finished_at IS NOT NULL AND NOT dry_run ORDER BY started_at DESC, id DESC LIMIT 1"
)
_RECONCILE_RUNS = "SELECT dry_run, count(*) FROM reconcile_runs GROUP BY dry_run"


class FleetStatsSource(Protocol):
    def snapshot(self) -> FleetStats:
        """The figures; RegistryUnavailable when the database does not answer in time."""
        ...


class PostgresFleetStats:
    """The figures from Postgres, on a connection of this object's own. One caller at a time
    (CachedFleetStats serialises them)."""

    def __init__(self, database_url: str) -> None:
        self._database_url = database_url
        self._conn: psycopg.Connection[tuple[Any, ...]] | None = None
        self.snapshots_taken = 0  # how many times the queries ran: the cache's effect, observable

    def snapshot(self) -> FleetStats:
        """The figures now; RegistryUnavailable when Postgres does not answer in time."""
        deadline = time.monotonic() + QUERY_BUDGET_SECS
        try:
            conn = self._connection()
            self.snapshots_taken += 1
            with conn.transaction(), conn.cursor() as cur:

                def query(
                    statement: str | sql.Composed, params: dict[str, Any] | None = None
                ) -> list[tuple[Any, ...]]:
                    # What is left of the budget bounds the next statement.
                    left_ms = max(1, int((deadline - time.monotonic()) * 1000))
                    cur.execute(
                        sql.SQL("SET LOCAL statement_timeout = {}").format(sql.Literal(left_ms))
                    )
                    return cur.execute(statement, params).fetchall()

                instances = query(_INSTANCES_BY_STATUS)
                transitions = query(_TRANSITIONS)
                durations = query(_STATUS_DURATIONS)
                actions = query(_RECONCILE_ACTIONS)
                runs = query(_RECONCILE_RUNS)
                newest = next(iter(query(_NEWEST_FINISHED_RUN)), None)
                in_flight = query(IN_USE, STATUS_PARAMS)[0][0]
                waiting = query(QUEUE)[0][0]
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            self.close()  # a broken or timed-out connection is opened afresh next time
            raise RegistryUnavailable("the registry database did not answer") from exc
        return FleetStats(
            instances_by_status=dict(instances),
            transitions={(src, dst): n for src, dst, n in transitions},
            status_durations={
                status: DurationHistogram(tuple(cumulative), count, total)
                for status, count, total, *cumulative in durations
            },
            reconcile_actions=dict(actions),
            reconcile_runs=dict(runs),
            reconcile_refused=bool(newest and newest[0]),
            reconcile_held_back=newest[1] if newest else 0,
            operations_in_flight=in_flight,
            waiting_for_capacity=waiting,
        )

    def _connection(self) -> psycopg.Connection[tuple[Any, ...]]:
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(
                self._database_url,
                autocommit=True,  # each snapshot is one explicit transaction
                connect_timeout=CONNECT_TIMEOUT_SECS,
                application_name=APPLICATION_NAME,
                options="-c default_transaction_read_only=on",
            )
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class CachedFleetStats:
    """The source's figures, computed at most once every `max_age` seconds; the answer, figures
    or RegistryUnavailable, is kept as long (a database that is down is asked again only then).
    Concurrent callers wait for the one computing instead of computing again."""

    def __init__(
        self,
        source: FleetStatsSource,
        *,
        max_age: float = MAX_AGE_SECS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.source = source
        self._max_age = max_age
        self._clock = clock
        self._lock = threading.Lock()
        self._computed_at: float | None = None
        self._answer: FleetStats | RegistryUnavailable | None = None

    def snapshot(self) -> FleetStats:
        with self._lock:
            now = self._clock()
            if self._computed_at is None or now - self._computed_at >= self._max_age:
                try:
                    self._answer = self.source.snapshot()
                except RegistryUnavailable as exc:
                    self._answer = exc
                self._computed_at = self._clock()
            answer = self._answer
        if isinstance(answer, RegistryUnavailable):
            raise RegistryUnavailable(answer.message) from answer.__cause__
        assert answer is not None
        return answer
