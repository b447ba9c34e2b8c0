"""Cross-process locks on Postgres advisory locks.

A session-level advisory lock is tied to its connection: if the holder dies (a worker killed with
SIGKILL), Postgres drops the connection and with it the lock, so no lock outlives its holder.

Locks take connections from a pool of their own (`make_lock_pool`), never from the pool that
serves queries: a lock is held for a whole step, and its connection must not be the one a registry
transaction runs on. Whatever pool it is given, a connection goes back exactly as it came out: in
its own autocommit mode, and with no advisory lock left on it (docs/ARCHITECTURE.md#conventions).
"""

import contextlib
from collections.abc import Iterator

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from shared.domain.errors import RegistryUnavailable

_TRY_LOCK = "SELECT pg_try_advisory_lock(hashtextextended(%s, 0))"
_UNLOCK = "SELECT pg_advisory_unlock(hashtextextended(%s, 0))"


class PostgresLocks:
    def __init__(self, pool: ConnectionPool) -> None:
        self._pool = pool

    @contextlib.contextmanager
    def hold(self, key: str) -> Iterator[bool]:
        """Try to take the lock named `key` without waiting; yields whether it was taken."""
        try:
            with self._pool.connection(timeout=10) as conn:
                autocommit = conn.autocommit
                # A session lock taken inside a transaction would keep that transaction open
                # (idle in transaction) for as long as the lock is held.
                conn.autocommit = True
                try:
                    with _released(conn, key, _try_lock(conn, key)) as taken:
                        yield taken
                finally:
                    _restore(conn, autocommit)
        except (psycopg.OperationalError, PoolTimeout) as exc:
            raise RegistryUnavailable("the registry database is unreachable") from exc


def _try_lock(conn: psycopg.Connection, key: str) -> bool:
    row = conn.execute(_TRY_LOCK, (key,)).fetchone()
    return bool(row and row[0])


@contextlib.contextmanager
def _released(conn: psycopg.Connection, key: str, taken: bool) -> Iterator[bool]:
    try:
        yield taken
    finally:
        if taken:
            try:
                row = conn.execute(_UNLOCK, (key,)).fetchone()
                released = bool(row and row[0])
            except psycopg.Error:
                released = False
            if not released:
                # The lock may still be held by this session: a closed connection is discarded by
                # the pool, and Postgres drops the lock with it.
                conn.close()


def _restore(conn: psycopg.Connection, autocommit: bool) -> None:
    if conn.closed:
        return
    try:
        conn.autocommit = autocommit
    except psycopg.Error:
        conn.close()
