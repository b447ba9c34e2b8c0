"""The fleet registry on Postgres: one `instances` row per VM, and its `instance_events` log.

Each method runs in one transaction of its own. Every write that depends on the status is one
statement (see `_write_statement`): it locks the row, checks the status in its WHERE and, for a
transition, appends the event, so a status change and its event commit together or not at all,
and nothing another actor commits can fall between the check and the write. Of several actors
moving one row from the same status, exactly one wins and the others get TransitionConflict.
"""

# Lazy annotations: inside the class, `list` names the method; `list[...]` must stay the builtin
# (a type checker resolves it in class scope all the same: there it is spelled `builtins.list`).
from __future__ import annotations

import base64
import builtins
import contextlib
import dataclasses
import json
import struct
import threading
import uuid
import weakref
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import psycopg
from psycopg import sql
from psycopg.rows import args_row
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from shared.adapters.db import (
    PreparedRead,
    Row,
    pooled_cursor,
    read_connection,
    run_prepared,
)
from shared.domain.errors import (
    InstanceNotFound,
    InvalidCursor,
    QuotaExceeded,
    TransitionConflict,
)
from shared.domain.lifecycle import LIVE, Status, check_transition
from shared.domain.records import (
    Event,
    Instance,
    InstanceState,
    summaries_json,
    vm_name_for,
)
from shared.domain.tenants import TenantName
from shared.ports import MAX_PAGE_SIZE

SETTABLE_FIELDS = frozenset(
    {
        "provider_id",
        "operation_id",
        "address",
        "reason",
        "ssh_pubkey",
        "forges",
        "teardown_mode",
        "wake_token",
        "idempotency_key",
    }
)
TEARDOWN_MODES = ("keep", "retire")
CREATED_REASON = "provision requested"

_COLUMNS = sql.SQL(", ").join(sql.Identifier(f.name) for f in dataclasses.fields(Instance))
_TIMESTAMPS = ("created_at", "updated_at", "status_changed_at")
_LIVE = [status.value for status in LIVE]
_STATUS_BY_VALUE = {status.value: status for status in Status}
# Namespace of the two-key advisory lock that serialises one tenant's creates (see `create`).
_CREATE_LOCK = 0x64617263  # "darc"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_CURSOR = struct.Struct(">q16s")  # created_at in µs since the epoch, then the id's 16 bytes
# How much of list_json's pages each registry remembers (`_PageMemory`): in characters (a page of
# 100 items is about 30,000; each page is counted with PAGE_OVERHEAD_CHARS more, for its key and
# snapshot), and in pages.
PAGE_MEMORY_CHARS = 4_000_000
PAGE_OVERHEAD_CHARS = 1_000
PAGES_REMEMBERED = 256


class PostgresFleetRegistry:
    """FleetRegistry (shared/ports.py) on a psycopg connection pool."""

    def __init__(self, pool: ConnectionPool, *, read_pool: ConnectionPool | None = None) -> None:
        """`read_pool`, if given (db.make_read_pool), serves `list_json`: one statement, no
        transaction around it. Everything else, and that too without one, uses `pool`."""
        self._pool = pool
        self._read_pool = read_pool or pool
        self._pages = _PageMemory(PAGE_MEMORY_CHARS, PAGES_REMEMBERED)

    def create(
        self, tenant: TenantName, *, request_key: str | None = None, max_live: int | None = None
    ) -> tuple[Instance, bool]:
        instance_id = uuid.uuid4()
        with self._cursor() as cur:
            if max_live is not None:
                # Counting and inserting are two statements: without this lock two racing creates
                # could both see room for one more.
                cur.execute(
                    "SELECT pg_advisory_xact_lock(%s::int4, hashtext(%s))", (_CREATE_LOCK, tenant)
                )
                existing = _by_request_key(cur, tenant, request_key)
                if existing is not None:
                    return existing, False
                live = _count_live(cur, tenant)
                if live >= max_live:
                    raise QuotaExceeded(
                        f"tenant {tenant} already has {live} live instances (the limit is "
                        f"{max_live})",
                        tenant=tenant,
                        limit=max_live,
                    )
            row = cur.execute(
                sql.SQL(
                    "INSERT INTO instances"
                    " (id, tenant, status, vm_name, idempotency_key, request_key, reason)"
                    " VALUES (%s, %s, %s, %s, %s, %s, %s)"
                    " ON CONFLICT (tenant, request_key) WHERE request_key IS NOT NULL DO NOTHING"
                    " RETURNING {}"
                ).format(_COLUMNS),
                (
                    instance_id,
                    tenant,
                    Status.PENDING.value,
                    vm_name_for(instance_id),
                    uuid.uuid4(),
                    request_key,
                    CREATED_REASON,
                ),
            ).fetchone()
            if row is None:
                # The same key won the race. ON CONFLICT waited for that insert to commit, and each
                # statement takes a fresh snapshot, so the next one sees the row.
                # None only if the winner's row was deleted in between (`withdraw`): left
                # as it was in this issue; typed honestly, it is a follow-up.
                return _by_request_key(cur, tenant, request_key), False  # type: ignore[return-value]
            _append_event(cur, instance_id, None, Status.PENDING, CREATED_REASON)
        return _instance(row), True

    def get(self, instance_id: uuid.UUID) -> Instance | None:
        with self._cursor() as cur:
            row = cur.execute(
                sql.SQL("SELECT {} FROM instances WHERE id = %s").format(_COLUMNS), (instance_id,)
            ).fetchone()
        return _instance(row) if row else None

    def list(
        self,
        *,
        tenant: TenantName | None = None,
        statuses: Iterable[Status] | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> tuple[list[Instance], str | None]:
        query, params = _page_query(_COLUMNS, tenant, statuses, limit, cursor)
        with self._cursor() as cur:
            # One row more than the page tells whether there is a next page.
            rows = cur.execute(query, params).fetchall()
        items = [_instance(row) for row in rows[:limit]]
        if len(rows) <= limit:
            return items, None
        return items, _encode_cursor(items[-1].created_at, items[-1].id)

    def list_json(
        self,
        *,
        tenant: TenantName | None = None,
        statuses: Iterable[Status] | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> tuple[str, str | None]:
        # Each row's item was written with the row (migrations/0010_instance_summary_json.sql):
        # here they are only joined. (Postgres joining them with string_agg costs it twice as much
        # as handing out the rows.) A page asked for again is handed out again only when Postgres
        # says nothing has committed since it was read (`_PageMemory`), in the same statement.
        params = _page_params(tenant, statuses, limit, cursor)
        # The statement's text depends only on which filters are present and on the limit:
        # rendered once each.
        shape = (tenant is not None, statuses is not None, cursor is not None)
        key = (shape, limit, *(tuple(p) if isinstance(p, builtins.list) else p for p in params))
        values = [_text_value(param) for param in params]
        with read_connection(self._read_pool, "the fleet registry database is unreachable") as conn:
            # Taken before the statement runs: a page read on a connection to a server that has
            # since crashed is kept under the epoch it was read in, never a later one.
            epoch = self._pages.epoch(conn)
            known = self._pages.get(key, epoch)
            statement = _list_json_statement(conn, shape, limit)
            rows = run_prepared(conn, statement, [known.snapshot if known else "", *values])
            snapshot, in_recovery = _snapshot(rows)
            if known is not None and snapshot == known.snapshot:
                return known.text, known.cursor
            items = [row[2] for row in rows if row[1]]
            if None in items:
                # A row written before migration 0010 and not yet backfilled (`db.migrate`): the
                # page again, such rows formatted as they are read. Not the hot path's statement:
                # naming the whole row there made Postgres build it for every row of every page.
                fallback = _list_json_statement(conn, shape, limit, fallback=True)
                rows = run_prepared(conn, fallback, ["", *values])
                snapshot, in_recovery = _snapshot(rows)
                items = [row[2] for row in rows if row[1]]
        # Never NULL by now: the fallback's items are coalesced.
        page = cast("builtins.list[str]", items)
        text = "[" + ",".join(page[:limit]) + "]"
        if not text.isascii() or "\x7f" in text:
            # Postgres leaves these characters as they are, where the gateway's JSON provider
            # escapes them: rewritten the provider's way (a rare page: reasons are ASCII).
            text = summaries_json(json.loads(text))
        next_cursor = None
        if len(page) > limit:
            last = json.loads(page[limit - 1])
            next_cursor = _encode_cursor(
                datetime.fromisoformat(last["created_at"]), uuid.UUID(last["id"])
            )
        if not in_recovery:
            self._pages.put(key, _Page(snapshot, epoch, text, next_cursor))
        return text, next_cursor

    def list_by_statuses(self, statuses: Iterable[Status]) -> builtins.list[InstanceState]:
        # Only InstanceState's columns, in binary (psycopg decodes uuids and timestamps in C),
        # each row built straight into its record: 100k rows for reconcile.
        with pooled_cursor(
            self._pool, "the fleet registry database is unreachable", row_factory=_STATE_ROW
        ) as cur:
            return cur.execute(
                _STATE_QUERY, ([status.value for status in _statuses(statuses)],), binary=True
            ).fetchall()

    def count_live(self, tenant: TenantName) -> int:
        with self._cursor() as cur:
            return _count_live(cur, tenant)

    def live_counts(self) -> dict[TenantName, int]:
        """Live instances per tenant, for every tenant that has any (one query)."""
        with self._cursor() as cur:
            rows = cur.execute(
                "SELECT tenant, count(*) AS live FROM instances WHERE status = ANY(%s)"
                " GROUP BY tenant",
                (_LIVE,),
            ).fetchall()
        return {TenantName.stored(row["tenant"]): row["live"] for row in rows}

    def transition(
        self,
        instance_id: uuid.UUID,
        expected: Status | Iterable[Status],
        target: Status,
        reason: str | None = None,
        **fields: object,
    ) -> Instance:
        expected = _expected(expected)
        target = Status(target)
        for current in expected:
            check_transition(current, target)
        values = {**_settable(fields), "reason": reason, "status": target.value}
        return self._write(instance_id, expected, values, log_event=True)

    def update(
        self,
        instance_id: uuid.UUID,
        expected: Status | Iterable[Status],
        *,
        expected_token: uuid.UUID | None = None,
        **fields: object,
    ) -> Instance:
        return self._write(
            instance_id, _expected(expected), _settable(fields), expected_token=expected_token
        )

    def _write(
        self,
        instance_id: uuid.UUID,
        expected: tuple[Status, ...],
        values: dict[str, object],
        *,
        log_event: bool = False,
        expected_token: uuid.UUID | None = None,
    ) -> Instance:
        """Compare-and-set in one statement: the row's status (and token) checked, the fields
        set, and for a transition its event appended. Nothing can commit in between."""
        params = {
            **values,
            "instance_id": instance_id,
            "expected": [status.value for status in expected],
            "expected_token": expected_token,
        }
        with self._cursor() as cur:
            row = cur.execute(
                _write_statement(values, log_event, expected_token), params
            ).fetchone()
        if row is None:
            raise InstanceNotFound(f"no instance {instance_id}", instance_id=str(instance_id))
        if row["id"] is None:
            current = Status(row["current_status"])
            wanted = " or ".join(status.value for status in expected)
            if current in expected:  # only the token can have failed the check
                message = f"instance {instance_id} has moved on to another wake token"
            else:
                message = f"instance {instance_id} is {current.value}, not {wanted}"
            raise TransitionConflict(message, instance_id=str(instance_id), current=current.value)
        del row["current_status"], row["previous_status"]
        return _instance(row)

    def note(self, instance_id: uuid.UUID, reason: str) -> None:
        with self._cursor() as cur:
            row = cur.execute(
                "INSERT INTO instance_events (instance_id, from_status, to_status, reason)"
                " SELECT id, status, status, %s FROM instances WHERE id = %s RETURNING id",
                (reason, instance_id),
            ).fetchone()
        if row is None:
            raise InstanceNotFound(f"no instance {instance_id}", instance_id=str(instance_id))

    def events(self, instance_id: uuid.UUID) -> builtins.list[Event]:
        with self._cursor() as cur:
            rows = cur.execute(
                "SELECT instance_id, at, from_status, to_status, reason FROM instance_events"
                " WHERE instance_id = %s ORDER BY id",
                (instance_id,),
            ).fetchall()
        return [
            Event(
                instance_id=row["instance_id"],
                at=row["at"].astimezone(UTC),
                from_status=Status(row["from_status"]) if row["from_status"] else None,
                to_status=Status(row["to_status"]),
                reason=row["reason"],
            )
            for row in rows
        ]

    def withdraw(self, instance_id: uuid.UUID, token: uuid.UUID) -> bool:
        # One statement is the compare-and-set: a worker that resumes the row rotates its token
        # or moves its status first, and then this deletes nothing.
        with self._cursor() as cur:
            row = cur.execute(
                "DELETE FROM instances WHERE id = %s AND status = %s AND wake_token = %s"
                " RETURNING id",
                (instance_id, Status.PENDING.value, token),
            ).fetchone()
        return row is not None

    def _cursor(self) -> contextlib.AbstractContextManager[psycopg.Cursor[Row]]:
        return pooled_cursor(self._pool, "the fleet registry database is unreachable")


def _page_query(
    columns: sql.Composable,
    tenant: TenantName | None,
    statuses: Iterable[Status] | None,
    limit: int,
    cursor: str | None,
) -> tuple[sql.Composed, list[object]]:
    """A page's statement, newest first, asking for one row more than `limit`: that one tells
    whether there is a next page; and its parameters."""
    params = _page_params(tenant, statuses, limit, cursor)
    shape = (tenant is not None, statuses is not None, cursor is not None)
    return _page_statement(columns, shape, limit), params


def _page_params(
    tenant: TenantName | None, statuses: Iterable[Status] | None, limit: int, cursor: str | None
) -> list[object]:
    """`_page_statement`'s parameters, in its order; the limit (which the statement's text
    holds) and the cursor checked."""
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE_SIZE:
        raise ValueError(f"limit must be an integer from 1 to {MAX_PAGE_SIZE}")
    params: list[object] = []
    if tenant is not None:
        params.append(tenant)
    if statuses is not None:
        params.append([status.value for status in _statuses(statuses)])
    if cursor is not None:
        params.extend(_decode_cursor(cursor))
    return params


def _text_value(param: object) -> str:
    """A `_page_params` parameter as Postgres reads it in text (`run_prepared`): a tenant as it is,
    statuses as an array, a cursor's position as an ISO 8601 timestamp with its offset and a
    UUID."""
    if isinstance(param, str):
        return param
    if isinstance(param, builtins.list):
        quoted = ('"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"' for value in param)
        return "{" + ",".join(quoted) + "}"
    if isinstance(param, datetime):
        return param.isoformat()
    if isinstance(param, uuid.UUID):
        return str(param)
    raise TypeError(f"no text form for a page parameter of type {type(param).__name__}")


def _page_statement(
    columns: sql.Composable,
    shape: tuple[bool, bool, bool],
    limit: int,
    *,
    unless_snapshot: sql.Composable | None = None,
) -> sql.Composed:
    """A page's statement for the filters `shape` says are present (tenant, statuses, cursor),
    asking for `limit` + 1 rows.

    The row count is in the text, not a parameter: a prepared statement whose only parameter is
    its LIMIT is planned afresh on every execution. Postgres's generic plan cannot know the limit,
    costs it as a tenth of the table and so never wins against a custom plan, and the unfiltered
    first page, the most asked-for statement, paid for a whole planning each time (a quarter of
    its time in Postgres). `limit` is a checked integer (`_page_params`).

    With `unless_snapshot` (an expression for the statement's snapshot), the page is read only
    when that differs from a first parameter before `_page_params`' (`_list_json_statement`).
    """
    by_tenant, by_status, after_cursor = shape
    conditions: list[sql.Composable] = []
    if unless_snapshot is not None:
        conditions.append(sql.SQL("{} <> %s").format(unless_snapshot))
    if by_tenant:
        conditions.append(sql.SQL("tenant = %s"))
    if by_status:
        conditions.append(sql.SQL("status = ANY(%s)"))
    if after_cursor:
        # Keyset pagination: rows strictly after the last one handed out, in the index order.
        conditions.append(sql.SQL("(created_at, id) < (%s, %s)"))
    # The ORDER BY names the table's columns: a bare name would mean the output column of that
    # name first, which in a summary is text computed for every row, sorted without the index.
    return sql.SQL(
        "SELECT {} FROM instances WHERE {}"
        " ORDER BY instances.created_at DESC, instances.id DESC LIMIT {}"
    ).format(
        columns, sql.SQL(" AND ").join(conditions or [sql.SQL("TRUE")]), sql.Literal(limit + 1)
    )


# A page's rows for list_json: each one's listing item, written with the row; and the same with a
# row written before migration 0010 and not yet backfilled (`db.migrate`) formatted as it is read.
# Each as (snapshot, present, item), `_list_json_statement`'s rows.
_PAGE_COLUMNS = sql.SQL("NULL, TRUE, summary_json")
_PAGE_COLUMNS_FALLBACK = sql.SQL(
    "NULL, TRUE, coalesce(summary_json, dark_instance_summary(instances))"
)
# list_json's statement, by which filters it has (tenant, statuses, cursor), whether it is the
# fallback, and the limit: at most 8 x 2 x MAX_PAGE_SIZE short texts.
_LIST_JSON_QUERIES: dict[tuple[tuple[bool, bool, bool], bool, int], PreparedRead] = {}


def _list_json_statement(
    conn: psycopg.Connection[Any],
    shape: tuple[bool, bool, bool],
    limit: int,
    *,
    fallback: bool = False,
) -> PreparedRead:
    """list_json's statement for `shape` and `limit`, rendered once each, for `run_prepared`.

    Its rows are (snapshot, present, item): one row (snapshot, NULL, 'recovery' on a standby or
    else NULL) with the snapshot the statement reads under and the time its server started
    (`_SNAPSHOT`), then the page's items in order as (NULL, TRUE, item), none when the page is empty
    or when the snapshot is the one its first parameter names. Then Postgres does not run the
    page's scan at all: the comparison names no column of the table, so the planner makes it a
    one-time filter above the scan. The other parameters are `_page_params`'.

    UNION ALL hands out each branch's rows in that branch's order, and the page's branch ends in
    its ORDER BY and LIMIT, which no parallel plan splits. Postgres runs the branches one after
    the other; `_snapshot` finds the snapshot's row wherever it is all the same.
    """
    key = (shape, fallback, limit)
    query = _LIST_JSON_QUERIES.get(key)
    if query is None:
        columns = _PAGE_COLUMNS_FALLBACK if fallback else _PAGE_COLUMNS
        page = _page_statement(columns, shape, limit, unless_snapshot=_SNAPSHOT)
        # Its name says which: list_json_<tenant, statuses, cursor as 0/1>_<limit>[_fallback].
        name = "list_json_{}_{}{}".format(
            "".join(str(int(present)) for present in shape), limit, "_fallback" if fallback else ""
        )
        query = PreparedRead.of(
            name,
            sql.SQL(
                "SELECT {}, NULL::boolean, CASE WHEN pg_is_in_recovery() THEN 'recovery' END"
                " UNION ALL ({})"
            )
            .format(_SNAPSHOT, page)
            .as_string(conn),
        )
        _LIST_JSON_QUERIES[key] = query
    return query


# The statement's snapshot and, since a server that restarts can hand out again the transaction
# ids it had not written to disk, when the server started (`_PageMemory`).
_SNAPSHOT = sql.SQL("pg_current_snapshot()::text || ' ' || pg_postmaster_start_time()::text")


def _snapshot(rows: builtins.list[tuple[Any, ...]]) -> tuple[str, bool]:
    """The snapshot in `_list_json_statement`'s rows, and whether its server is a standby."""
    snapshot, _, recovery = next(row for row in rows if row[1] is None)
    return snapshot, recovery is not None


@dataclasses.dataclass(frozen=True, slots=True)
class _Page:
    snapshot: str  # `_SNAPSHOT` of the statement that read it
    epoch: int  # `_PageMemory.epoch` when that statement began
    text: str
    cursor: str | None


class _PageMemory:
    """list_json's pages, each with the snapshot Postgres read it under, by statement and
    parameters; at most `pages` of them and `budget` characters (each page counted with
    PAGE_OVERHEAD_CHARS more), the oldest forgotten first.

    A page is handed out again only when the statement asking for it runs under the very same
    snapshot (xmin, xmax, the transactions in progress), which fixes which transactions a
    statement sees. A transaction that took an id (wrote anything) changes the next snapshot's
    xmax or its list in progress when it commits or aborts, so two statements under the same
    snapshot read the same rows, and a remembered page is exactly what the scan would have read:
    every answer still reflects every write committed before its statement began, whichever
    process wrote it.

    That holds while the server's transaction ids only move forward. A server that crashes can
    hand out again the ids of transactions it had not yet written to disk (an abort is not
    flushed at once), and repeat a snapshot that now sees other rows. A restart changes the
    server's start time, which is part of the snapshot compared; a crash of one backend makes the
    server reinitialise without a restart, but it ends every connection. So pages also carry an
    epoch, moved on whenever a read runs on a connection not seen before: a page is handed out
    only in the epoch it was read in. On a standby the list in progress is empty while others run
    and commit, so a page read there is never kept. (Behind a pooler that silently reconnects to a
    server that reinitialised, none of this would be seen: the read pool talks to Postgres
    directly.)
    """

    def __init__(self, budget: int, pages: int) -> None:
        self._budget = budget
        self._most = pages
        # Each page with what it counts for (`_cost`, when it was put).
        self._pages: dict[tuple[object, ...], tuple[_Page, int]] = {}
        self._used = 0
        self._lock = threading.Lock()
        self._epoch = 0
        self._seen: weakref.WeakSet[psycopg.Connection[Any]] = weakref.WeakSet()

    def epoch(self, connection: psycopg.Connection[Any]) -> int:
        """The current epoch, moved on first if `connection` is new."""
        if connection not in self._seen:
            with self._lock:
                self._seen.add(connection)
                self._epoch += 1
                self._pages.clear()
                self._used = 0
        return self._epoch

    def get(self, key: tuple[object, ...], epoch: int) -> _Page | None:
        held = self._pages.get(key)
        return held[0] if held is not None and held[0].epoch == epoch else None

    def put(self, key: tuple[object, ...], page: _Page) -> None:
        size = _cost(page)
        if size > self._budget:
            return
        with self._lock:
            if page.epoch != self._epoch:
                return
            replaced = self._pages.pop(key, None)
            if replaced is not None:
                self._used -= replaced[1]
            while self._pages and (
                self._used + size > self._budget or len(self._pages) >= self._most
            ):
                self._used -= self._pages.pop(next(iter(self._pages)))[1]
            self._pages[key] = (page, size)
            self._used += size

    @property
    def used(self) -> int:
        """Characters the pages held count for."""
        return self._used

    def __len__(self) -> int:
        return len(self._pages)


def _cost(page: _Page) -> int:
    return len(page.text) + len(page.snapshot) + PAGE_OVERHEAD_CHARS


def _statuses(statuses: Status | Iterable[Status]) -> tuple[Status, ...]:
    # A Status is a str, and iterating over one would yield its letters.
    if isinstance(statuses, str):
        return (Status(statuses),)
    return tuple(dict.fromkeys(Status(status) for status in statuses))


def _expected(expected: Status | Iterable[Status]) -> tuple[Status, ...]:
    statuses = _statuses(expected)
    if not statuses:
        raise ValueError("expected must name at least one status")
    return statuses


def _settable(fields: dict[str, Any]) -> dict[str, object]:
    unknown = fields.keys() - SETTABLE_FIELDS
    if unknown:
        raise ValueError(f"an instance has no settable field {', '.join(sorted(unknown))}")
    if fields.get("teardown_mode") not in (None, *TEARDOWN_MODES):
        raise ValueError(f"teardown_mode must be one of {', '.join(TEARDOWN_MODES)}")
    if "forges" in fields:
        return {**fields, "forges": Jsonb(list(fields["forges"]))}
    return dict(fields)


def _write_statement(
    values: dict[str, object], log_event: bool, expected_token: uuid.UUID | None
) -> sql.Composed:
    """One statement that locks the row, checks it, updates it and (for a transition) logs it.

    `locked` takes the row lock first, so the update and the event see the status it was moved from;
    the outer join still returns that status when the check fails, to tell a conflict from a
    missing row. A racing writer waits on the row lock and then sees the winner's status.
    """
    assignments: list[sql.Composable] = [sql.SQL("updated_at = now()")]
    if "status" in values:
        assignments.append(sql.SQL("status_changed_at = now()"))
    assignments += [
        sql.SQL("{} = {}").format(sql.Identifier(name), sql.Placeholder(name)) for name in values
    ]
    checks: list[sql.Composable] = [sql.SQL("locked.status = ANY(%(expected)s)")]
    if expected_token is not None:
        checks.append(sql.SQL("locked.wake_token = %(expected_token)s"))
    event = sql.SQL(
        ", logged AS (INSERT INTO instance_events (instance_id, from_status, to_status, reason)"
        " SELECT id, previous_status, status, reason FROM moved)"
        if log_event
        else ""
    )
    return sql.SQL(
        "WITH locked AS ("
        "SELECT id, status, wake_token FROM instances WHERE id = %(instance_id)s FOR UPDATE"
        "), moved AS ("
        "UPDATE instances AS i SET {assignments} FROM locked"
        " WHERE i.id = locked.id AND {checks}"
        " RETURNING {columns}, locked.status AS previous_status"
        "){event} "
        "SELECT locked.status AS current_status, moved.* FROM locked LEFT JOIN moved ON TRUE"
    ).format(
        assignments=sql.SQL(", ").join(assignments),
        checks=sql.SQL(" AND ").join(checks),
        columns=sql.SQL(", ").join(
            sql.Identifier("i", field.name) for field in dataclasses.fields(Instance)
        ),
        event=event,
    )


def _append_event(
    cur: psycopg.Cursor[Row],
    instance_id: uuid.UUID,
    from_status: Status | None,
    to_status: Status,
    reason: str | None,
) -> None:
    cur.execute(
        "INSERT INTO instance_events (instance_id, from_status, to_status, reason)"
        " VALUES (%s, %s, %s, %s)",
        (instance_id, from_status.value if from_status else None, to_status.value, reason),
    )


def _by_request_key(
    cur: psycopg.Cursor[Row], tenant: TenantName, request_key: str | None
) -> Instance | None:
    if request_key is None:
        return None
    row = cur.execute(
        sql.SQL("SELECT {} FROM instances WHERE tenant = %s AND request_key = %s").format(_COLUMNS),
        (tenant, request_key),
    ).fetchone()
    return _instance(row) if row else None


def _count_live(cur: psycopg.Cursor[Row], tenant: TenantName) -> int:
    row = cur.execute(
        "SELECT count(*) AS live FROM instances WHERE tenant = %s AND status = ANY(%s)",
        (tenant, _LIVE),
    ).fetchone()
    assert row is not None  # an aggregate always gives a row
    live: int = row["live"]
    return live


def _instance(row: Row) -> Instance:
    """The Instance a row holds. Builds on `row` itself, a fresh dict per row: a listing pays
    for no copies."""
    row["tenant"] = TenantName.stored(row["tenant"])
    row["status"] = _STATUS_BY_VALUE[row["status"]]
    row["forges"] = tuple(row["forges"])
    for name in _TIMESTAMPS:
        row[name] = row[name].astimezone(UTC)
    return Instance(**row)


def _state(
    id: uuid.UUID,
    tenant: str,
    status: str,
    vm_name: str,
    created_at: datetime,
    updated_at: datetime,
    status_changed_at: datetime,
    provider_id: str | None,
    reason: str | None,
) -> InstanceState:
    """An InstanceState from its columns (`_STATE_QUERY`'s, in InstanceState's order)."""
    return InstanceState(
        id,
        TenantName.stored(tenant),
        _STATUS_BY_VALUE[status],
        vm_name,
        created_at.astimezone(UTC),
        updated_at.astimezone(UTC),
        status_changed_at.astimezone(UTC),
        provider_id,
        reason,
    )


_STATE_ROW = args_row(_state)
_STATE_QUERY = sql.SQL(
    "SELECT {} FROM instances WHERE status = ANY(%s) ORDER BY created_at, id"
).format(sql.SQL(", ").join(sql.Identifier(f.name) for f in dataclasses.fields(InstanceState)))


def _encode_cursor(created_at: datetime, instance_id: uuid.UUID) -> str:
    micros = (created_at - _EPOCH) // timedelta(microseconds=1)
    return base64.urlsafe_b64encode(_CURSOR.pack(micros, instance_id.bytes)).decode("ascii")


def _decode_cursor(cursor: object) -> tuple[datetime, uuid.UUID]:
    if not isinstance(cursor, str):
        raise InvalidCursor("the cursor is malformed; start again without one")
    try:
        micros, id_bytes = _CURSOR.unpack(base64.urlsafe_b64decode(cursor))
        position = (_EPOCH + timedelta(microseconds=micros), uuid.UUID(bytes=id_bytes))
    except (TypeError, ValueError, OverflowError, struct.error) as exc:
        raise InvalidCursor("the cursor is malformed; start again without one") from exc
    # The decoder skips characters outside the alphabet: only our own exact encoding is accepted.
    if _encode_cursor(*position) != cursor:
        raise InvalidCursor("the cursor is malformed; start again without one")
    return position
