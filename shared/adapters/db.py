"""Postgres connections, the one way adapters use them, and schema migrations.

Migrations are the numbered `.sql` files in migrations/, applied in order under an advisory lock so
that several processes starting at once apply each exactly once.
"""

import collections
import contextlib
import dataclasses
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar, overload

import psycopg
from psycopg import pq
from psycopg.rows import RowFactory, dict_row
from psycopg_pool import ConnectionPool
from psycopg_pool.base import AttemptWithBackoff

from shared.domain.errors import RegistryUnavailable

MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"
_MIGRATION_LOCK = 0x6461726B  # "dark": one advisory-lock key for the whole schema

# A row as the adapters read it by default (`dict_row`): column name to value.
Row = dict[str, Any]
RowT = TypeVar("RowT")


def make_pool(
    database_url: str,
    *,
    min_size: int = 1,
    max_size: int = 4,
    timeout: float = 5,
    check: Callable[[psycopg.Connection[Any]], None] | None = None,
    reset: Callable[[psycopg.Connection[Any]], None] | None = None,
    **kwargs: Any,
) -> ConnectionPool:
    """A pool that checks connections before use, so a Postgres restart costs one failed attempt.

    `timeout` bounds the wait for a connection: with Postgres down a caller gets an error (a 503
    at the API) within seconds instead of after psycopg_pool's default 30 s.

    Every connection starts with TimeZone=UTC (a startup parameter, the same for the connection's
    whole life): psycopg then hands back timestamps in `datetime.UTC`, for which the adapters'
    `astimezone(UTC)` costs nothing, where a zone name such as the server's default Etc/UTC makes
    it a zoneinfo lookup per value (five per listed instance).
    """
    return _Pool(
        database_url,
        min_size=min_size,
        max_size=max_size,
        timeout=timeout,
        check=check or ConnectionPool.check_connection,
        reset=reset,
        open=True,
        kwargs={"connect_timeout": 5, "options": "-c TimeZone=UTC", **kwargs},
    )


# The longest a pool waits between two attempts to reconnect after Postgres went away.
MAX_RECONNECT_DELAY = 2.0


class _CappedBackoff(AttemptWithBackoff):
    """psycopg_pool's reconnect backoff (1 s, doubling) with its delay capped. Uncapped, an
    outage of N seconds left the pool waiting up to N more before its next attempt, answering
    503 all that while with Postgres back (a 14 s outage: no connection for 16 s more)."""

    def update_delay(self, now: float) -> None:
        super().update_delay(now)
        self.delay = min(self.delay, MAX_RECONNECT_DELAY)


class _Pool(ConnectionPool):
    """ConnectionPool, reconnecting with `_CappedBackoff` (psycopg_pool takes no setting for it:
    its attempts start in `_add_connection`, whose first one this hands in)."""

    def _add_connection(self, attempt: AttemptWithBackoff | None, growing: bool = False) -> None:
        super()._add_connection(
            attempt or _CappedBackoff(timeout=self.reconnect_timeout), growing=growing
        )


def make_lock_pool(database_url: str, *, max_size: int = 2) -> ConnectionPool:
    """Connections for PostgresLocks only, autocommit from creation.

    A lock's connection is held for a whole step, and a session lock must never share a
    connection with the registry's transactions: locks get a pool of their own, never the one
    that serves queries. One process holds at most two locks at once (a step's instance lock and
    the tenant-init lock inside it; reconcile's run lock and an instance lock).
    """
    return make_pool(database_url, min_size=1, max_size=max_size, autocommit=True)


def make_read_pool(
    database_url: str, *, max_size: int = 4, check_idle_after: float = 2.0, **kwargs: Any
) -> ConnectionPool:
    """Autocommit connections for single-statement reads (`read_cursor`), kept apart from the pool
    that serves transactions: a statement is its own transaction there, so a read costs one round
    trip instead of BEGIN, the statement and COMMIT.

    A connection is checked before use only when it has been idle longer than `check_idle_after`
    seconds: a Postgres restart (which takes longer than that) is still met by a check, while a
    busy gateway, whose connections are back in use within milliseconds, pays no extra round trip
    per request. A connection broken within those seconds fails one read (RegistryUnavailable, a
    503 at the API) and the pool replaces it.
    """
    idle = _IdleCheck(check_idle_after)
    return make_pool(
        database_url,
        min_size=1,
        max_size=max_size,
        autocommit=True,
        check=idle.check,
        **kwargs,
    )


class _IdleCheck:
    """A pool `check` that pings a connection only when it was last handed out more than `after`
    seconds ago. Measured from the checkout, not the return: psycopg_pool runs a `reset` hook (the
    one way to hear of a return) as a task on its worker thread, which would be a thread wake-up
    and a GIL hand-off on every request. A read holds its connection for milliseconds, so the two
    differ by that much; a connection held longer is checked sooner, never later."""

    def __init__(self, after: float) -> None:
        self._after = after
        self._used_at: weakref.WeakKeyDictionary[psycopg.Connection[Any], float] = (
            weakref.WeakKeyDictionary()
        )

    def check(self, conn: psycopg.Connection[Any]) -> None:
        now = time.monotonic()
        used = self._used_at.get(conn)
        if used is None or now - used > self._after:
            ConnectionPool.check_connection(conn)
        self._used_at[conn] = now


@contextlib.contextmanager
def read_connection(pool: ConnectionPool, unavailable: str) -> Iterator[psycopg.Connection[Any]]:
    """A connection for one read (`read_cursor`, `run_prepared`), back to the pool at the end.
    Postgres not answering leaves as RegistryUnavailable(`unavailable`), as `pooled_cursor`."""
    # getconn/putconn, not `pool.connection()`: that also enters the connection's own context,
    # whose exit commits (or rolls back) a transaction an autocommit connection never has, one more
    # wait on the connection per read; `read_cursor`'s transaction block does that job on others.
    try:
        conn = pool.getconn()
    except psycopg.OperationalError as exc:  # PoolTimeout is one too
        raise RegistryUnavailable(unavailable) from exc
    try:
        yield conn
    except psycopg.OperationalError as exc:
        raise RegistryUnavailable(unavailable) from exc
    finally:
        # The pool inspects what it gets back and discards a broken connection.
        pool.putconn(conn)


@contextlib.contextmanager
def read_cursor(
    pool: ConnectionPool, unavailable: str, *, row_factory: RowFactory[Any] = dict_row
) -> Iterator[psycopg.Cursor[Any]]:
    """A cursor for one read statement. On an autocommit pool (`make_read_pool`) there is no
    transaction around it; on any other it is `pooled_cursor`'s. Errors as `pooled_cursor`."""
    with read_connection(pool, unavailable) as conn:
        if conn.autocommit:
            with conn.cursor(row_factory=row_factory) as cur:
                yield cur
        else:
            with conn.transaction(), conn.cursor(row_factory=row_factory) as cur:
                yield cur


@dataclasses.dataclass(frozen=True, slots=True)
class PreparedRead:
    """A read statement for `run_prepared`: the name it is prepared under on each connection, and
    its text with libpq's placeholders ($1, $2, ...)."""

    name: bytes
    text: bytes

    @classmethod
    def of(cls, name: str, query: str) -> "PreparedRead":
        """From `query` as psycopg writes it (each parameter `%s`, no other `%`)."""
        pieces = query.split("%s")
        if any("%" in piece for piece in pieces):
            raise ValueError("a PreparedRead's query has only %s placeholders")
        text = pieces[0] + "".join(f"${n}{piece}" for n, piece in enumerate(pieces[1:], 1))
        return cls(f"dark_{name}".encode(), text.encode())


def run_prepared(
    conn: psycopg.Connection[Any], statement: PreparedRead, params: Sequence[str]
) -> list[tuple[str | None, ...]]:
    """Run `statement` on `conn`, an idle connection held alone (`read_connection`), through
    libpq itself: its rows, each value as text (None for NULL). Each parameter is sent as text
    (none is NULL) and takes the type Postgres gives its place in the statement.

    For a read that runs many times a second: psycopg's cursor spends as much CPU again as
    libpq's round trip on a one-row answer (its cursor, its parameter adaptation, its prepared-
    statement bookkeeping), here none of it. The statement is prepared under its own name the first
    time it runs on a connection (so a new connection, after a Postgres restart too, prepares it
    again), and prepared again if the server has lost it. The connection stays psycopg's: libpq
    waits with the GIL released, and the pool sees the connection's state as after any statement.
    (Unlike psycopg's wait, libpq's does not stop for a signal: a handler runs once the answer is
    in. Only a process's main thread receives signals, and a gateway's requests run on others.)

    Errors are psycopg's, by SQLSTATE: an OperationalError when Postgres does not answer.
    """
    pgconn = conn.pgconn
    if pgconn.transaction_status != pq.TransactionStatus.IDLE:
        raise psycopg.ProgrammingError("run_prepared needs an idle connection")
    state = _prepared_on(conn)
    encoding, names = state.encoding, state.names
    values = [value.encode(encoding) for value in params]
    for _ in range(2):
        if statement.name in names:
            names.move_to_end(statement.name)
        else:
            if len(names) >= PREPARED_PER_CONNECTION:
                # The one used longest ago goes: a server keeps each statement and its plans in
                # the backend's memory, and list_json alone has 8 x 500 statements to ask for.
                _deallocate(pgconn, next(iter(names)), encoding)
                names.popitem(last=False)
            _prepare(pgconn, statement, encoding)
            names[statement.name] = None
        result = pgconn.exec_prepared(statement.name, values)
        if result.error_field(pq.DiagnosticField.SQLSTATE) != _NO_SUCH_STATEMENT:
            break
        # Deallocated behind this module's back (DEALLOCATE, DISCARD ALL): prepared again.
        del names[statement.name]
    _check(result, encoding)
    fields = range(result.nfields)
    return [
        tuple(
            None if (value := result.get_value(row, field)) is None else value.decode(encoding)
            for field in fields
        )
        for row in range(result.ntuples)
    ]


# The most statements `run_prepared` keeps prepared on one connection, the least recently used
# deallocated first (psycopg keeps at most 100 of its own).
PREPARED_PER_CONNECTION = 32

# SQLSTATE invalid_sql_statement_name: "prepared statement ... does not exist".
_NO_SUCH_STATEMENT = b"26000"
# SQLSTATE duplicate_prepared_statement: "prepared statement ... already exists".
_STATEMENT_EXISTS = b"42P05"


def _prepare(pgconn: pq.abc.PGconn, statement: PreparedRead, encoding: str) -> None:
    result = pgconn.prepare(statement.name, statement.text)
    if result.error_field(pq.DiagnosticField.SQLSTATE) == _STATEMENT_EXISTS:
        # Prepared on the server but not in `names`: an error or an interrupt came between the
        # two (a failed DEALLOCATE leaves it listed). Its text may not be this one: replaced.
        _deallocate(pgconn, statement.name, encoding)
        result = pgconn.prepare(statement.name, statement.text)
    _check(result, encoding)


def _deallocate(pgconn: pq.abc.PGconn, name: bytes, encoding: str) -> None:
    """Deallocate `name`, which may already be gone. Any other error is raised, and the caller's
    record of the statement stays as it was: the server still holds it."""
    result = pgconn.exec_(b'DEALLOCATE "' + name + b'"')
    if result.error_field(pq.DiagnosticField.SQLSTATE) != _NO_SUCH_STATEMENT:
        _check(result, encoding)


@dataclasses.dataclass(slots=True)
class _Prepared:
    encoding: str  # the connection's client encoding, as Python names it
    # The statements prepared on the connection, the least recently used first.
    names: collections.OrderedDict[bytes, None] = dataclasses.field(
        default_factory=collections.OrderedDict
    )


_PREPARED: weakref.WeakKeyDictionary[psycopg.Connection[Any], _Prepared] = (
    weakref.WeakKeyDictionary()
)
_PREPARED_LOCK = threading.Lock()


def _prepared_on(conn: psycopg.Connection[Any]) -> _Prepared:
    state = _PREPARED.get(conn)
    if state is None:
        with _PREPARED_LOCK:
            state = _PREPARED.setdefault(conn, _Prepared(conn.info.encoding))
    return state


def _check(result: pq.abc.PGresult, encoding: str) -> None:
    """Raise the error psycopg would for a failed `result`: its class by SQLSTATE (an unknown code
    by its class, so that 57Z01 is an OperationalError too), with its diagnostics."""
    if result.status in (pq.ExecStatus.TUPLES_OK, pq.ExecStatus.COMMAND_OK):
        return
    if result.error_field(pq.DiagnosticField.SQLSTATE) is None:
        # No answer from the server: the connection is gone.
        message = result.error_message.decode(encoding, "replace").strip()
        raise psycopg.OperationalError(message or "the connection to Postgres was lost")
    raise psycopg.errors.error_from_result(result, encoding)


@overload
def pooled_cursor(
    pool: ConnectionPool, unavailable: str, *, timeout: float | None = None
) -> contextlib.AbstractContextManager[psycopg.Cursor[Row]]: ...


@overload
def pooled_cursor(
    pool: ConnectionPool,
    unavailable: str,
    *,
    row_factory: RowFactory[RowT],
    timeout: float | None = None,
) -> contextlib.AbstractContextManager[psycopg.Cursor[RowT]]: ...


@contextlib.contextmanager
def pooled_cursor(
    pool: ConnectionPool,
    unavailable: str,
    *,
    row_factory: RowFactory[Any] = dict_row,
    timeout: float | None = None,
) -> Iterator[psycopg.Cursor[Any]]:
    """A cursor in a transaction of its own: committed at the end, rolled back on an error.

    The transaction is explicit, so it holds whatever mode the pooled connection is in.

    Postgres not answering (down, the pool's wait for a connection timing out, a statement
    timeout) leaves as RegistryUnavailable(`unavailable`): the domain never sees psycopg.
    `timeout` overrides the pool's wait for a connection.
    """
    try:
        with (
            pool.connection(timeout=timeout) as conn,
            conn.transaction(),
            conn.cursor(row_factory=row_factory) as cur,
        ):
            yield cur
    except psycopg.OperationalError as exc:  # PoolTimeout and QueryCanceled are ones too
        raise RegistryUnavailable(unavailable) from exc


def migrate(database_url: str) -> list[str]:
    """Apply pending migrations; returns the names applied now. Safe to run concurrently."""
    applied_now: list[str] = []
    with psycopg.connect(database_url, autocommit=True, connect_timeout=10) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (_MIGRATION_LOCK,))
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {row[0] for row in conn.execute("SELECT name FROM schema_migrations")}
            for path in sorted(MIGRATIONS_DIR.glob("*.sql")):
                if path.name in done:
                    continue
                with conn.transaction():
                    conn.execute(path.read_text())
                    conn.execute("INSERT INTO schema_migrations (name) VALUES (%s)", (path.name,))
                applied_now.append(path.name)
            for name, backfill in _BACKFILLS.items():
                if name in done or name in applied_now:
                    backfill(conn)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_MIGRATION_LOCK,))
    return applied_now


# Rows written before migrations/0010_instance_summary_json.sql have no listing item: filled this
# many at a time, each batch a short transaction of its own, never one long lock over the table.
_BACKFILL_BATCH = 1000


def _backfill_instance_summaries(conn: psycopg.Connection[Any]) -> None:
    """Write the listing item of every row that has none (the trigger writes it on any update).
    Rows a writer holds are skipped, not waited for: that write fills them in."""
    while True:
        with conn.transaction():
            filled = conn.execute(
                "UPDATE instances SET summary_json = NULL WHERE id IN ("
                " SELECT id FROM instances WHERE summary_json IS NULL"
                " LIMIT %s FOR UPDATE SKIP LOCKED)",
                (_BACKFILL_BATCH,),
            ).rowcount
        if filled < _BACKFILL_BATCH:
            return


# Data a migration leaves to be filled after it, in small transactions, by the migration's name:
# run at every migrate() once that migration is in (a no-op when there is nothing left to fill).
_BACKFILLS: dict[str, Callable[[psycopg.Connection[Any]], None]] = {
    "0010_instance_summary_json.sql": _backfill_instance_summaries,
}
