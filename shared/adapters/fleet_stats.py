"""Fleet statistics on Postgres, for the gateway's /metrics (services/api/metrics.py).

Every figure is one aggregate query: Postgres counts, sums and buckets, and Python receives a few
rows per status or kind, never a row per instance or event. The time spent in each status comes
from consecutive events of one instance (a window function), so nothing beyond the event log
(migrations/0001) is kept for it. The queries run in one transaction under a statement timeout: a
slow database makes a scrape report the database down, never makes it hang.
"""

from dataclasses import dataclass

from psycopg import sql
from psycopg.rows import tuple_row
from psycopg_pool import ConnectionPool

from shared.adapters.db import pooled_cursor

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
# Seconds a scrape waits for a pooled connection, and for each statement.
QUERY_TIMEOUT_SECS = 2


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


class PostgresFleetStats:
    def __init__(self, pool: ConnectionPool) -> None:
        self._pool = pool

    def snapshot(self) -> FleetStats:
        """The figures now; RegistryUnavailable when Postgres does not answer in time."""
        with pooled_cursor(
            self._pool,
            "the registry database did not answer",
            row_factory=tuple_row,
            timeout=QUERY_TIMEOUT_SECS,
        ) as cur:
            # SET LOCAL: the pooled connection goes back with its own timeout.
            cur.execute(
                sql.SQL("SET LOCAL statement_timeout = {}").format(
                    sql.Literal(QUERY_TIMEOUT_SECS * 1000)
                )
            )
            instances = cur.execute(_INSTANCES_BY_STATUS).fetchall()
            transitions = cur.execute(_TRANSITIONS).fetchall()
            durations = cur.execute(_STATUS_DURATIONS).fetchall()
            actions = cur.execute(_RECONCILE_ACTIONS).fetchall()
            runs = cur.execute(_RECONCILE_RUNS).fetchall()
            newest = cur.execute(_NEWEST_FINISHED_RUN).fetchone()
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
        )
