"""Cross-process locks on Postgres advisory locks.

A session-level advisory lock is tied to its connection: if the holder dies (a worker killed with
SIGKILL), Postgres drops the connection and with it the lock, so no lock outlives its holder.
"""

import contextlib
from collections.abc import Iterator

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from shared.domain.errors import RegistryUnavailable


class PostgresLocks:
    def __init__(self, pool: ConnectionPool) -> None:
        self._pool = pool

    @contextlib.contextmanager
    def hold(self, key: str) -> Iterator[bool]:
        """Try to take the lock named `key` without waiting; yields whether it was taken."""
        try:
            conn_cm = self._pool.connection(timeout=10)
            conn = conn_cm.__enter__()
        except (psycopg.OperationalError, PoolTimeout) as exc:
            raise RegistryUnavailable("the registry database is unreachable") from exc
        try:
            conn.autocommit = True
            row = conn.execute(
                "SELECT pg_try_advisory_lock(hashtextextended(%s, 0))", (key,)
            ).fetchone()
            taken = bool(row and row[0])
            try:
                yield taken
            finally:
                if taken:
                    with contextlib.suppress(psycopg.Error):
                        conn.execute("SELECT pg_advisory_unlock(hashtextextended(%s, 0))", (key,))
        except psycopg.OperationalError as exc:
            conn_cm.__exit__(type(exc), exc, exc.__traceback__)
            raise RegistryUnavailable("the registry database is unreachable") from exc
        except BaseException as exc:
            conn_cm.__exit__(type(exc), exc, exc.__traceback__)
            raise
        else:
            conn_cm.__exit__(None, None, None)
