"""PostgresLocks against the real Postgres, and what a lock helper must never do to the pool it
takes connections from (docs/ARCHITECTURE.md#conventions: nothing leaks through a pool).

The pool-of-one tests are the wiring that went wrong: the lock helper and the registry sharing one
pool, so that every registry call gets the very connection the last lock ran on.
"""

import secrets
import threading
import time
import uuid

import psycopg
import pytest
from psycopg import sql

from shared.adapters.db import make_lock_pool, make_pool
from shared.adapters.locks import PostgresLocks
from shared.adapters.registry import PostgresFleetRegistry
from shared.domain.errors import TransitionConflict
from shared.domain.lifecycle import Status

S = Status


class PausesBeforeWritingInstances(psycopg.Cursor):
    """A cursor that calls `before_write` right before any statement that updates `instances`.

    The pause falls between a registry write's read of the row and its update when those are two
    statements, and before the whole write when it is one.
    """

    before_write = None

    def execute(self, query, params=None, **kwargs):
        text = query.as_string(self) if isinstance(query, sql.Composable) else str(query)
        hook = type(self).before_write
        if hook is not None and "UPDATE instances" in text:
            type(self).before_write = None  # once: the hook itself may write
            hook()
        return super().execute(query, params, **kwargs)


@pytest.fixture
def tenant(pg_pool):
    name = f"lock-{secrets.token_hex(6)}"
    yield name
    with pg_pool.connection() as conn:
        conn.execute("DELETE FROM instances WHERE tenant = %s", (name,))


@pytest.fixture
def shared_pool_of_one(migrated_database_url):
    """One connection, handed in turn to the lock helper and to the registry."""
    cursor_class = type("Paused", (PausesBeforeWritingInstances,), {})
    pool = make_pool(migrated_database_url, max_size=1, cursor_factory=cursor_class)
    pool.cursor_class = cursor_class
    yield pool
    pool.close()


@pytest.fixture
def lock_pool(migrated_database_url):
    pool = make_lock_pool(migrated_database_url, max_size=2)
    yield pool
    pool.close()


def initializing_row(registry, tenant):
    instance, _ = registry.create(tenant)
    for target in (S.PROVISIONING, S.INITIALIZING):
        instance = registry.transition(instance.id, instance.status, target)
    return instance


def advisory_locks_of(pg_pool, backend_pid: int) -> int:
    with pg_pool.connection() as conn:
        return conn.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = %s",
            (backend_pid,),
        ).fetchone()[0]


# --- the lock helper leaves the pool as it found it -------------------------------------------


def test_a_lock_taken_and_released_hands_its_connection_back_in_a_transaction_mode(
    shared_pool_of_one, pg_pool
):
    locks = PostgresLocks(shared_pool_of_one)
    with shared_pool_of_one.connection() as conn:
        pid = conn.info.backend_pid

    with locks.hold(f"test:{uuid.uuid4()}") as taken:
        assert taken

    with shared_pool_of_one.connection() as conn:
        assert conn.info.backend_pid == pid  # the very connection the lock ran on
        assert conn.autocommit is False
    assert advisory_locks_of(pg_pool, pid) == 0


def test_a_lock_helper_sharing_the_registrys_pool_cannot_split_a_transition(
    shared_pool_of_one, migrated_database_url, pg_pool, tenant
):
    """The DELETE's `tearing_down` commits after the pipeline read `initializing` and before it
    wrote `ready`: the pipeline's write must fail rather than overwrite it."""
    registry = PostgresFleetRegistry(shared_pool_of_one)
    instance = initializing_row(registry, tenant)
    with PostgresLocks(shared_pool_of_one).hold(f"instance:{instance.id}") as taken:
        assert taken
    deleter_name = f"deleter-{secrets.token_hex(4)}"
    deleter_pool = make_pool(migrated_database_url, max_size=1, application_name=deleter_name)
    deleted = threading.Event()

    def delete_request():
        PostgresFleetRegistry(deleter_pool).transition(
            instance.id, S.INITIALIZING, S.TEARING_DOWN, "delete requested"
        )
        deleted.set()

    def deleter_commits_or_waits_for_the_row():
        threading.Thread(target=delete_request, daemon=True).start()
        deadline = time.monotonic() + 10
        while not deleted.is_set() and time.monotonic() < deadline:
            with pg_pool.connection() as conn:
                waiting = conn.execute(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE application_name = %s AND wait_event_type = 'Lock'",
                    (deleter_name,),
                ).fetchone()[0]
            if waiting:
                return
            time.sleep(0.02)

    shared_pool_of_one.cursor_class.before_write = deleter_commits_or_waits_for_the_row
    try:
        with pytest.raises(TransitionConflict) as conflict:
            registry.transition(instance.id, S.INITIALIZING, S.READY, "guest initialised")
        assert deleted.wait(10)
    finally:
        deleter_pool.close()

    assert conflict.value.details["current"] == "tearing_down"
    assert registry.get(instance.id).status is S.TEARING_DOWN
    events = registry.events(instance.id)
    assert [(e.from_status, e.to_status) for e in events[-1:]] == [(S.INITIALIZING, S.TEARING_DOWN)]


def test_a_status_and_its_event_commit_together_or_not_at_all(shared_pool_of_one, pg_pool, tenant):
    registry = PostgresFleetRegistry(shared_pool_of_one)
    instance = initializing_row(registry, tenant)
    events_before = registry.events(instance.id)
    with PostgresLocks(shared_pool_of_one).hold(f"instance:{instance.id}") as taken:
        assert taken
    suffix = secrets.token_hex(4)
    function, trigger = f"fail_event_{suffix}", f"fail_event_{suffix}"
    with pg_pool.connection() as conn:
        conn.execute(
            sql.SQL(
                "CREATE FUNCTION {}() RETURNS trigger LANGUAGE plpgsql AS"
                " $$BEGIN RAISE EXCEPTION 'the event log is failing'; END$$"
            ).format(sql.Identifier(function))
        )
        conn.execute(
            sql.SQL(
                "CREATE TRIGGER {} BEFORE INSERT ON instance_events FOR EACH ROW"
                " WHEN (NEW.instance_id = {}) EXECUTE FUNCTION {}()"
            ).format(
                sql.Identifier(trigger), sql.Literal(str(instance.id)), sql.Identifier(function)
            )
        )
    try:
        with pytest.raises(psycopg.Error, match="the event log is failing"):
            registry.transition(instance.id, S.INITIALIZING, S.READY, "guest initialised")
    finally:
        with pg_pool.connection() as conn:
            conn.execute(
                sql.SQL("DROP TRIGGER {} ON instance_events").format(sql.Identifier(trigger))
            )
            conn.execute(sql.SQL("DROP FUNCTION {}()").format(sql.Identifier(function)))

    assert registry.get(instance.id) == instance
    assert registry.events(instance.id) == events_before


# --- locks on a pool of their own -------------------------------------------------------------


def test_a_held_lock_is_busy_for_everyone_else_until_released(lock_pool, migrated_database_url):
    key = f"test:{uuid.uuid4()}"
    other_pool = make_lock_pool(migrated_database_url, max_size=1)
    try:
        mine, theirs = PostgresLocks(lock_pool), PostgresLocks(other_pool)
        with mine.hold(key) as taken:
            assert taken
            with theirs.hold(key) as also_taken:
                assert not also_taken
        with theirs.hold(key) as taken_after_release:
            assert taken_after_release
    finally:
        other_pool.close()


def test_a_lock_pool_serves_a_lock_held_inside_another(lock_pool, pg_pool):
    locks = PostgresLocks(lock_pool)
    with (
        locks.hold(f"instance:{uuid.uuid4()}") as outer,
        locks.hold(f"tenant-init:{uuid.uuid4()}") as inner,
    ):
        assert outer and inner
    pids = []
    for _ in range(2):
        with lock_pool.connection() as conn:
            assert conn.autocommit  # lock connections are autocommit from creation
            pids.append(conn.info.backend_pid)
    assert [advisory_locks_of(pg_pool, pid) for pid in pids] == [0, 0]
