"""The wait history on Postgres (table `wait_samples`, migrations/0009_wait_samples.sql).

Every worker reads and writes the same rows, so a VM's wait is learned from the whole fleet's. The
table stays small: each record deletes the samples of its kind older than the newest `RECENT`.
"""

import contextlib
import uuid

import psycopg
from psycopg_pool import ConnectionPool

from shared.adapters.db import Row, pooled_cursor
from shared.domain.waits import WaitKind, WaitSample

# How many samples of a kind the estimate reads, and the table keeps.
RECENT = 20

_INSERT = (
    "INSERT INTO wait_samples (kind, instance_id, not_done_at, done_at) VALUES (%s, %s, %s, %s)"
    " ON CONFLICT (kind, instance_id) DO NOTHING"
)
_PRUNE = (
    "DELETE FROM wait_samples WHERE kind = %(kind)s AND recorded_at < ("
    " SELECT recorded_at FROM wait_samples WHERE kind = %(kind)s"
    " ORDER BY recorded_at DESC LIMIT 1 OFFSET %(keep)s)"
)
_RECENT = (
    "SELECT not_done_at, done_at FROM wait_samples WHERE kind = %s"
    " ORDER BY recorded_at DESC LIMIT %s"
)


class PostgresWaitHistory:
    def __init__(self, pool: ConnectionPool) -> None:
        self._pool = pool

    def record(self, kind: WaitKind, instance_id: uuid.UUID, sample: WaitSample) -> None:
        with self._cursor() as cur:
            cur.execute(_INSERT, (kind.value, instance_id, sample.not_done_at, sample.done_at))
            if cur.rowcount == 1:
                cur.execute(_PRUNE, {"kind": kind.value, "keep": RECENT - 1})

    def recent(self, kind: WaitKind) -> list[WaitSample]:
        with self._cursor() as cur:
            rows = cur.execute(_RECENT, (kind.value, RECENT)).fetchall()
        return [WaitSample(not_done_at=r["not_done_at"], done_at=r["done_at"]) for r in rows]

    def _cursor(self) -> contextlib.AbstractContextManager[psycopg.Cursor[Row]]:
        return pooled_cursor(self._pool, "the registry database is unreachable")
