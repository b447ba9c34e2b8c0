"""Reconcile run records on Postgres (table `reconcile_runs`, migrations/0001 and 0005).

Both timestamps come from the database clock, read while the caller holds the reconcile lock: one
clock for every run, so stored runs can be compared with each other (they never overlap).
"""

import contextlib
from datetime import UTC
from typing import Any

import psycopg
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from shared.adapters.db import Row, pooled_cursor

MAX_LATEST = 100
_SELECT = (
    "SELECT id, started_at, finished_at, dry_run, outcome, trigger, counts, actions, errors"
    " FROM reconcile_runs"
)
_LATEST = _SELECT + " ORDER BY started_at DESC, id DESC LIMIT %s"
_LAST_REAL = (
    _SELECT
    + " WHERE finished_at IS NOT NULL AND NOT dry_run ORDER BY started_at DESC, id DESC LIMIT 1"
)
OUTCOMES = ("applied", "dry_run", "refused")


class PostgresReconcileRuns:
    def __init__(self, pool: ConnectionPool) -> None:
        self._pool = pool

    def start(self, *, dry_run: bool, trigger: str) -> int:
        """Record that a run starts now; returns its id."""
        with self._cursor() as cur:
            row = cur.execute(
                "INSERT INTO reconcile_runs (started_at, dry_run, trigger)"
                " VALUES (clock_timestamp(), %s, %s) RETURNING id",
                (dry_run, trigger),
            ).fetchone()
        # INSERT … RETURNING always gives a row.
        assert row is not None
        run_id: int = row["id"]
        return run_id

    def finish(
        self,
        run_id: int,
        *,
        outcome: str,
        counts: dict[str, Any],
        actions: list[Any],
        errors: list[Any],
    ) -> None:
        """Record that the run finished now, how (`OUTCOMES`), and what it did (JSON-ready)."""
        if outcome not in OUTCOMES:
            raise ValueError(f"outcome must be one of {OUTCOMES}")
        with self._cursor() as cur:
            cur.execute(
                "UPDATE reconcile_runs SET finished_at = clock_timestamp(), outcome = %s,"
                " counts = %s, actions = %s, errors = %s WHERE id = %s",
                (outcome, Jsonb(counts), Jsonb(actions), Jsonb(errors), run_id),
            )

    def latest(self, limit: int = 20) -> list[Row]:
        """The newest runs first, as plain dicts (timestamps are UTC datetimes; an unfinished
        run — still going, or its process died — has `finished_at` None)."""
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LATEST:
            raise ValueError(f"limit must be an integer from 1 to {MAX_LATEST}")
        with self._cursor() as cur:
            rows = cur.execute(_LATEST, (limit,)).fetchall()
        return [_utc(row) for row in rows]

    def last_real_run(self) -> Row | None:
        """The newest finished run that was not a dry run (as `latest` gives it), or None.
        A dry run changes nothing, so it leaves what the last real run said standing."""
        with self._cursor() as cur:
            row = cur.execute(_LAST_REAL).fetchone()
        return None if row is None else _utc(row)

    def _cursor(self) -> contextlib.AbstractContextManager[psycopg.Cursor[Row]]:
        return pooled_cursor(self._pool, "the registry database is unreachable")


def _utc(row: Row) -> Row:
    row["started_at"] = row["started_at"].astimezone(UTC)
    if row["finished_at"] is not None:
        row["finished_at"] = row["finished_at"].astimezone(UTC)
    return row
