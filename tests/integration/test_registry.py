"""PostgresFleetRegistry against the real Postgres (docs/ARCHITECTURE.md#lifecycle): creates,
compare-and-set transitions with their event log, keyset pagination, and Postgres being unreachable.

Each test works on tenants of its own and deletes their rows (events cascade) when it ends.
"""

import base64
import dataclasses
import json
import secrets
import struct
import threading
import time
import unicodedata
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from psycopg.pq import TransactionStatus
from psycopg_pool import ConnectionPool

import shared.adapters.registry as registry_module
from shared.adapters.db import make_pool, make_read_pool, read_cursor
from shared.adapters.registry import PostgresFleetRegistry
from shared.domain.errors import (
    DomainError,
    IllegalTransition,
    InstanceNotFound,
    InvalidCursor,
    QuotaExceeded,
    RegistryUnavailable,
    TransitionConflict,
)
from shared.domain.lifecycle import IN_FLIGHT, Status
from shared.domain.records import Event, InstanceState, instance_summary, summaries_json
from shared.domain.tenants import TenantName
from tests.support.processes import free_port

S = Status


@pytest.fixture
def registry(pg_pool):
    return PostgresFleetRegistry(pg_pool)


@pytest.fixture
def new_tenant(pg_pool):
    made: list[TenantName] = []

    def make(prefix: str = "reg") -> TenantName:
        made.append(TenantName(f"{prefix}-{secrets.token_hex(6)}"))
        return made[-1]

    yield make
    with pg_pool.connection() as conn:
        conn.execute("DELETE FROM instances WHERE tenant = ANY(%s)", (made,))


@pytest.fixture
def tenant(new_tenant):
    return new_tenant()


def race(workers: int, action):
    """Run action(i) in `workers` threads released at the same moment; results or exceptions."""
    start = threading.Barrier(workers)

    def attempt(i):
        start.wait(timeout=10)
        try:
            return action(i)
        except Exception as exc:
            return exc

    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(attempt, range(workers)))


def rows_of(pg_pool, tenant: str) -> int:
    with pg_pool.connection() as conn:
        return conn.execute(
            "SELECT count(*) FROM instances WHERE tenant = %s", (tenant,)
        ).fetchone()[0]


def walk(registry, instance_id, *steps):
    """Move an instance along `steps` (each from the status before it)."""
    instance = registry.get(instance_id)
    for target in steps:
        instance = registry.transition(instance_id, instance.status, target)
    return instance


# --- create and get -------------------------------------------------------------------------


def test_create_writes_a_pending_row_and_its_first_event(registry, tenant):
    instance, created = registry.create(tenant)

    assert created
    assert instance.tenant == tenant
    assert instance.status is S.PENDING
    assert instance.id.version == 4
    assert instance.vm_name == f"dark-vm-{instance.id}"
    assert isinstance(instance.idempotency_key, uuid.UUID)
    assert instance.idempotency_key != instance.id
    assert instance.reason == "provision requested"
    assert (instance.provider_id, instance.operation_id, instance.address) == (None, None, None)
    assert instance.forges == ()
    assert instance.created_at == instance.updated_at == instance.status_changed_at
    assert registry.get(instance.id) == instance
    (event,) = registry.events(instance.id)
    assert event == Event(instance.id, event.at, None, S.PENDING, "provision requested")


def test_unknown_ids_have_no_row_and_no_events(registry):
    assert registry.get(uuid.uuid4()) is None
    assert registry.events(uuid.uuid4()) == []


def test_a_tenant_name_is_stored_as_its_text_and_read_back_as_a_tenant_name(
    registry, pg_pool, new_tenant
):
    tenant = new_tenant("café")
    # Built at the edge from whatever form the client sent; psycopg binds the str subclass as text.
    instance, _ = registry.create(TenantName(unicodedata.normalize("NFD", tenant)))
    assert instance.tenant == tenant and type(instance.tenant) is TenantName
    assert rows_of(pg_pool, tenant) == 1
    fetched = registry.get(instance.id)
    assert fetched is not None and type(fetched.tenant) is TenantName
    assert [i.id for i in registry.list(tenant=tenant)[0]] == [instance.id]
    assert registry.count_live(tenant) == 1


def test_a_row_written_by_hand_with_a_name_the_rules_refuse_is_still_read(
    registry, pg_pool, new_tenant
):
    instance, _ = registry.create(new_tenant())
    hand_written = f"{instance.tenant}/by hand"
    with pg_pool.connection() as conn:
        conn.execute("UPDATE instances SET tenant = %s WHERE id = %s", (hand_written, instance.id))
    try:
        fetched = registry.get(instance.id)
        assert fetched is not None and fetched.tenant == hand_written
        assert instance.id in {i.id for i in registry.list_by_statuses([Status.PENDING])}
    finally:
        with pg_pool.connection() as conn:
            conn.execute("DELETE FROM instances WHERE id = %s", (instance.id,))


def test_timestamps_are_utc_whatever_the_session_time_zone(migrated_database_url, tenant):
    pool = make_pool(migrated_database_url, options="-c TimeZone=Asia/Kolkata")
    try:
        registry = PostgresFleetRegistry(pool)
        instance, _ = registry.create(tenant)
        with pool.connection() as conn:
            assert conn.execute("SHOW TimeZone").fetchone()[0] == "Asia/Kolkata"
            conn.execute("DELETE FROM instances WHERE id = %s", (instance.id,))
    finally:
        pool.close()
    for stamp in (instance.created_at, instance.updated_at, instance.status_changed_at):
        assert stamp.tzinfo is UTC
        assert abs(stamp - datetime.now(UTC)) < timedelta(minutes=1)


# --- request keys and the per-tenant cap ----------------------------------------------------


def test_the_same_request_key_returns_the_same_row(registry, pg_pool, new_tenant):
    tenant, other = new_tenant(), new_tenant()
    first, created_first = registry.create(tenant, request_key="key-1")
    again, created_again = registry.create(tenant, request_key="key-1")

    assert (created_first, created_again) == (True, False)
    assert again == first
    assert registry.create(tenant, request_key="key-2")[0].id != first.id
    # The key is scoped to the tenant; without a key every call is a new instance.
    assert registry.create(other, request_key="key-1")[0].id != first.id
    assert registry.create(tenant)[0].id != registry.create(tenant)[0].id
    assert len(registry.events(first.id)) == 1


@pytest.mark.parametrize("max_live", [None, 5], ids=["uncapped", "capped"])
def test_racing_creates_with_one_request_key_make_exactly_one_row(
    registry, pg_pool, tenant, max_live
):
    results = race(8, lambda _: registry.create(tenant, request_key="k", max_live=max_live))

    assert not [r for r in results if isinstance(r, Exception)]
    assert len({instance.id for instance, _ in results}) == 1
    assert sorted(created for _, created in results) == [False] * 7 + [True]
    assert rows_of(pg_pool, tenant) == 1
    assert len(registry.events(results[0][0].id)) == 1


def test_racing_creates_never_exceed_the_cap(registry, tenant):
    results = race(8, lambda _: registry.create(tenant, max_live=3))

    made = [r[0] for r in results if isinstance(r, tuple)]
    refused = [r for r in results if isinstance(r, Exception)]
    assert len(made) == 3
    assert len(refused) == 5
    assert all(isinstance(r, QuotaExceeded) for r in refused)
    assert refused[0].details == {"tenant": tenant, "limit": 3}
    assert registry.count_live(tenant) == 3

    # A failed instance no longer counts, so there is room for one more.
    registry.transition(made[0].id, S.PENDING, S.FAILED, "gave up")
    registry.create(tenant, max_live=3)
    with pytest.raises(QuotaExceeded):
        registry.create(tenant, max_live=3)


def test_a_repeated_request_at_the_cap_returns_its_row(registry, tenant):
    first, _ = registry.create(tenant, request_key="k", max_live=1)
    assert registry.create(tenant, request_key="k", max_live=1) == (first, False)
    with pytest.raises(QuotaExceeded):
        registry.create(tenant, request_key="other", max_live=1)


def test_count_live_counts_rows_that_have_or_are_getting_a_vm(registry, tenant):
    ids = [registry.create(tenant)[0].id for _ in range(7)]
    walk(registry, ids[1], S.PROVISIONING)
    walk(registry, ids[2], S.PROVISIONING, S.INITIALIZING, S.READY)
    walk(registry, ids[3], S.FAILED)
    walk(registry, ids[4], S.PROVISIONING, S.INITIALIZING, S.READY, S.LOST)
    walk(registry, ids[5], S.TEARING_DOWN)
    walk(registry, ids[6], S.TEARING_DOWN, S.RETIRED)

    assert registry.count_live(tenant) == 3  # pending, provisioning, ready


# --- transitions ----------------------------------------------------------------------------


def test_each_transition_sets_its_fields_and_appends_exactly_one_event(registry, tenant):
    instance, _ = registry.create(tenant)
    provider_id = f"fhm{secrets.token_hex(8)}"
    forges = [{"name": "github", "host": "github.com", "registered": True}]

    steps = [
        (S.PROVISIONING, "cloud create requested", {"operation_id": "op-1"}),
        (S.INITIALIZING, "VM running", {"provider_id": provider_id, "address": "10.1.2.3"}),
        (S.READY, "guest initialised", {"ssh_pubkey": "ssh-ed25519 AAAA", "forges": forges}),
        (S.TEARING_DOWN, "teardown requested", {"teardown_mode": "retire"}),
        (S.RETIRED, None, {}),
    ]
    previous = instance
    for target, reason, fields in steps:
        moved = registry.transition(instance.id, previous.status, target, reason, **fields)
        assert moved.status is target
        assert moved.reason == reason
        assert moved.status_changed_at > previous.status_changed_at
        assert moved.updated_at == moved.status_changed_at
        assert registry.get(instance.id) == moved
        previous = moved

    assert previous.operation_id == "op-1"
    assert previous.provider_id == provider_id
    assert previous.address == "10.1.2.3"
    assert previous.ssh_pubkey == "ssh-ed25519 AAAA"
    assert previous.forges == tuple(forges)
    assert previous.teardown_mode == "retire"
    assert previous.created_at == instance.created_at

    events = registry.events(instance.id)
    assert [(e.from_status, e.to_status, e.reason) for e in events] == [
        (None, S.PENDING, "provision requested"),
        (S.PENDING, S.PROVISIONING, "cloud create requested"),
        (S.PROVISIONING, S.INITIALIZING, "VM running"),
        (S.INITIALIZING, S.READY, "guest initialised"),
        (S.READY, S.TEARING_DOWN, "teardown requested"),
        (S.TEARING_DOWN, S.RETIRED, None),
    ]
    assert all(e.at.tzinfo is UTC for e in events)
    assert [e.at for e in events] == sorted(e.at for e in events)


def test_with_several_expected_statuses_the_event_records_the_actual_one(registry, tenant):
    instance, _ = registry.create(tenant)
    walk(registry, instance.id, S.PROVISIONING, S.INITIALIZING)

    moved = registry.transition(instance.id, IN_FLIGHT, S.TEARING_DOWN, "cancelled")

    assert moved.status is S.TEARING_DOWN
    last = registry.events(instance.id)[-1]
    assert (last.from_status, last.to_status, last.reason) == (
        S.INITIALIZING,
        S.TEARING_DOWN,
        "cancelled",
    )


@pytest.mark.parametrize(
    ("expected", "target"),
    [
        (S.PENDING, S.READY),
        (S.PENDING, S.PENDING),
        (S.PENDING, S.RETIRED),
        # The row is pending, but a move from one of the expected statuses is illegal.
        ({S.PENDING, S.RETIRED}, S.TEARING_DOWN),
    ],
)
def test_an_illegal_transition_is_refused_and_writes_nothing(registry, tenant, expected, target):
    instance, _ = registry.create(tenant)

    with pytest.raises(IllegalTransition):
        registry.transition(instance.id, expected, target, "nope")

    assert registry.get(instance.id) == instance
    assert len(registry.events(instance.id)) == 1


def test_a_transition_from_a_status_the_row_left_is_a_conflict(registry, tenant):
    instance, _ = registry.create(tenant)
    moved = walk(registry, instance.id, S.PROVISIONING)

    with pytest.raises(TransitionConflict) as conflict:
        registry.transition(instance.id, S.PENDING, S.FAILED, "too late")

    assert conflict.value.details["current"] == "provisioning"
    assert registry.get(instance.id) == moved
    assert len(registry.events(instance.id)) == 2


def test_writes_to_an_unknown_instance_are_not_found(registry):
    with pytest.raises(InstanceNotFound):
        registry.transition(uuid.uuid4(), S.PENDING, S.PROVISIONING)
    with pytest.raises(InstanceNotFound):
        registry.update(uuid.uuid4(), S.PENDING, address="10.0.0.1")


@pytest.mark.parametrize(
    "fields",
    [{"bogus": 1}, {"status": "ready"}, {"tenant": "x"}, {"teardown_mode": "nuke"}],
    ids=["unknown", "status", "tenant", "bad-teardown-mode"],
)
def test_fields_outside_the_whitelist_are_refused_and_nothing_is_written(registry, tenant, fields):
    instance, _ = registry.create(tenant)

    with pytest.raises(ValueError):
        registry.transition(instance.id, S.PENDING, S.PROVISIONING, **fields)
    with pytest.raises(ValueError):
        registry.update(instance.id, S.PENDING, **fields)

    assert registry.get(instance.id) == instance
    assert len(registry.events(instance.id)) == 1


def test_an_empty_expected_set_is_a_programming_error(registry, tenant):
    instance, _ = registry.create(tenant)
    with pytest.raises(ValueError):
        registry.transition(instance.id, [], S.FAILED)


@pytest.mark.parametrize("workers", [2, 8])
def test_of_racing_transitions_from_one_status_exactly_one_wins(registry, tenant, workers):
    instance, _ = registry.create(tenant)
    targets = [S.PROVISIONING, S.TEARING_DOWN, S.FAILED]

    results = race(
        workers,
        lambda i: registry.transition(instance.id, S.PENDING, targets[i % 3], f"worker {i}"),
    )

    winners = [r for r in results if not isinstance(r, Exception)]
    losers = [r for r in results if isinstance(r, Exception)]
    assert len(winners) == 1
    assert len(losers) == workers - 1
    assert all(isinstance(r, TransitionConflict) for r in losers)
    assert registry.get(instance.id).status is winners[0].status
    events = registry.events(instance.id)
    assert len(events) == 2
    assert (events[1].from_status, events[1].to_status) == (S.PENDING, winners[0].status)


def test_racing_updates_and_a_transition_never_lose_the_transition(registry, tenant):
    instance, _ = registry.create(tenant)

    def act(i):
        if i == 0:
            return registry.transition(instance.id, S.PENDING, S.TEARING_DOWN, "teardown")
        return registry.update(instance.id, S.PENDING, operation_id=f"op-{i}")

    results = race(8, act)

    assert all(not isinstance(r, Exception) or isinstance(r, TransitionConflict) for r in results)
    assert registry.get(instance.id).status is S.TEARING_DOWN
    assert len(registry.events(instance.id)) == 2


# --- update ---------------------------------------------------------------------------------


def test_update_records_progress_without_moving_the_status(registry, tenant):
    instance, _ = registry.create(tenant)
    walk(registry, instance.id, S.PROVISIONING)
    before = registry.get(instance.id)

    updated = registry.update(instance.id, S.PROVISIONING, operation_id="op-7", address="10.0.0.9")
    assert (updated.status, updated.operation_id, updated.address) == (
        S.PROVISIONING,
        "op-7",
        "10.0.0.9",
    )
    assert updated.updated_at > before.updated_at
    assert updated.status_changed_at == before.status_changed_at

    touched = registry.update(instance.id, {S.PENDING, S.PROVISIONING})
    assert touched.updated_at > updated.updated_at
    assert (touched.operation_id, touched.address) == ("op-7", "10.0.0.9")

    cleared = registry.update(instance.id, S.PROVISIONING, address=None)
    assert cleared.address is None
    assert len(registry.events(instance.id)) == 2


def test_update_after_the_status_moved_on_is_a_conflict(registry, tenant):
    instance, _ = registry.create(tenant)
    moved = walk(registry, instance.id, S.TEARING_DOWN)

    with pytest.raises(TransitionConflict):
        registry.update(instance.id, S.PENDING, operation_id="late")

    assert registry.get(instance.id) == moved


def test_update_with_an_expected_token_writes_only_while_the_row_still_has_it(registry, tenant):
    instance, _ = registry.create(tenant)
    carried, fresh = instance.wake_token, uuid.uuid4()

    moved_on = registry.update(instance.id, S.PENDING, expected_token=carried, wake_token=fresh)
    assert moved_on.wake_token == fresh

    with pytest.raises(TransitionConflict) as conflict:
        registry.update(instance.id, S.PENDING, expected_token=carried, wake_token=uuid.uuid4())
    assert conflict.value.details["current"] == "pending"
    assert registry.get(instance.id) == moved_on


# --- listing --------------------------------------------------------------------------------


def test_list_filters_by_tenant_and_status_newest_first(registry, new_tenant):
    tenant, other = new_tenant(), new_tenant()
    mine = [registry.create(tenant)[0] for _ in range(3)]
    theirs = [registry.create(other)[0] for _ in range(2)]
    walk(registry, mine[1].id, S.PROVISIONING)

    items, cursor = registry.list(tenant=tenant)
    assert [i.id for i in items] == [i.id for i in reversed(mine)]
    assert cursor is None

    assert [i.id for i in registry.list(tenant=tenant, statuses=[S.PROVISIONING])[0]] == [
        mine[1].id
    ]
    assert [i.id for i in registry.list(tenant=other, statuses=S.PENDING)[0]] == [
        i.id for i in reversed(theirs)
    ]
    assert registry.list(tenant=tenant, statuses=[])[0] == []
    everyone = {i.id for i in registry.list(statuses=["pending", "provisioning"], limit=500)[0]}
    assert {i.id for i in mine + theirs} <= everyone


def test_list_refuses_bad_arguments(registry):
    for limit in (0, -1, 501, True, "10", 2.5):
        with pytest.raises(ValueError):
            registry.list(limit=limit)
    with pytest.raises(ValueError):
        registry.list(statuses=["running"])
    assert len(registry.list(limit=500)[0]) <= 500


def test_list_by_statuses_returns_every_matching_row_oldest_first(registry, tenant):
    ids = [registry.create(tenant)[0].id for _ in range(4)]
    walk(registry, ids[0], S.FAILED)
    walk(registry, ids[2], S.TEARING_DOWN)
    walk(registry, ids[3], S.FAILED)

    found = [
        i.id for i in registry.list_by_statuses({S.FAILED, S.TEARING_DOWN}) if i.tenant == tenant
    ]

    assert found == [ids[0], ids[2], ids[3]]
    assert registry.list_by_statuses([]) == []


def test_list_by_statuses_reads_each_row_as_the_state_its_instance_holds(registry, tenant):
    # Reconcile reads 100k rows this way: only InstanceState's columns, decoded apart from `get`.
    bare, _ = registry.create(tenant)
    owned, _ = registry.create(tenant)
    registry.transition(owned.id, S.PENDING, S.PROVISIONING, "creating", provider_id="fhm-owned")

    states = {s.id: s for s in registry.list_by_statuses(set(S)) if s.tenant == tenant}

    assert set(states) == {bare.id, owned.id}
    for instance_id, state in states.items():
        instance = registry.get(instance_id)
        assert state == InstanceState(
            **{f.name: getattr(instance, f.name) for f in dataclasses.fields(InstanceState)}
        )
        assert type(state.tenant) is TenantName and type(state.status) is S
        assert state.updated_at.tzinfo is UTC
    assert (states[owned.id].provider_id, states[owned.id].reason) == ("fhm-owned", "creating")


def bulk_insert(
    pg_pool, tenant: str, count: int, base: datetime
) -> list[tuple[datetime, uuid.UUID]]:
    """Rows straight into the table with COPY, seven to a created_at, every status represented."""
    statuses = list(Status)
    rows = []
    for i in range(count):
        instance_id = uuid.uuid4()
        created_at = base + timedelta(milliseconds=i // 7)
        rows.append(
            (
                instance_id,
                tenant,
                statuses[i % len(statuses)].value,
                f"dark-vm-{instance_id}",
                uuid.uuid4(),
                created_at,
                created_at,
                created_at,
            )
        )
    with (
        pg_pool.connection() as conn,
        conn.cursor() as cur,
        cur.copy(
            "COPY instances (id, tenant, status, vm_name, idempotency_key,"
            " created_at, updated_at, status_changed_at) FROM STDIN"
        ) as copy,
    ):
        for row in rows:
            copy.write_row(row)
    return [(row[5], row[0]) for row in rows]


def paginate(registry, cursor=None, **filters) -> list:
    items, cursor = registry.list(cursor=cursor, **filters)
    pages = [items]
    while cursor is not None:
        items, cursor = registry.list(cursor=cursor, **filters)
        pages.append(items)
    assert pages[-1] or len(pages) == 1, "a cursor was handed out for an empty page"
    return [item for page in pages for item in page]


def test_cursor_pages_through_10000_rows_each_exactly_once_newest_first(registry, pg_pool, tenant):
    base = datetime.now(UTC) - timedelta(days=3)
    inserted = bulk_insert(pg_pool, tenant, 10_000, base)
    newest_first = [instance_id for _, instance_id in sorted(inserted, reverse=True)]

    listed = paginate(registry, tenant=tenant, limit=137)
    assert [i.id for i in listed] == newest_first

    wanted = {S.READY, S.FAILED}
    by_status = paginate(registry, tenant=tenant, statuses=wanted, limit=137)
    assert [i.id for i in by_status] == [i.id for i in listed if i.status in wanted]

    # Without filters the pages also hold other tests' rows: ours appear once each, in order.
    everything = paginate(registry, limit=500)
    positions = [(i.created_at, i.id) for i in everything]
    assert positions == sorted(set(positions), reverse=True)
    assert [i.id for i in everything if i.tenant == tenant] == newest_first


def test_rows_created_after_a_page_was_read_do_not_disturb_the_next_pages(registry, tenant):
    first = [registry.create(tenant)[0] for _ in range(5)]
    page, cursor = registry.list(tenant=tenant, limit=2)
    later = [registry.create(tenant)[0] for _ in range(2)]

    rest = paginate(registry, tenant=tenant, limit=2, cursor=cursor)

    assert [i.id for i in page + rest] == [i.id for i in reversed(first)]
    assert [i.id for i in registry.list(tenant=tenant)[0][:2]] == [i.id for i in reversed(later)]


def _cursor(micros: int, instance_id: uuid.UUID) -> str:
    return base64.urlsafe_b64encode(struct.pack(">q16s", micros, instance_id.bytes)).decode()


def test_a_malformed_cursor_is_invalid(registry, tenant):
    for _ in range(3):
        registry.create(tenant)
    _, good = registry.list(tenant=tenant, limit=1)
    assert registry.list(tenant=tenant, limit=1, cursor=good)[0]

    malformed = [
        "",
        "garbage",
        "!!!!",
        good[:-1],
        good + "A",
        good + "==",
        good[:10] + "*" + good[11:],
        good[:10] + "\u00e9" + good[11:],
        base64.urlsafe_b64encode(b"0123456789").decode(),
        _cursor(2**62, uuid.uuid4()),  # beyond any date
        _cursor(-(2**62), uuid.uuid4()),
        12345,
        b"bytes",
    ]
    for cursor in malformed:
        with pytest.raises(InvalidCursor) as invalid:
            registry.list(tenant=tenant, cursor=cursor)
        assert isinstance(invalid.value, DomainError)


# --- Postgres unreachable -------------------------------------------------------------------


def test_an_unreachable_database_is_registry_unavailable(tenant):
    pool = ConnectionPool(
        f"postgresql://postgres@127.0.0.1:{free_port()}/postgres",
        min_size=1,
        timeout=0.3,
        open=True,
        kwargs={"connect_timeout": 1},
    )
    registry = PostgresFleetRegistry(pool)
    calls = [
        lambda: registry.create(tenant),
        lambda: registry.get(uuid.uuid4()),
        lambda: registry.list(),
        lambda: registry.transition(uuid.uuid4(), S.PENDING, S.PROVISIONING),
        lambda: registry.events(uuid.uuid4()),
    ]
    try:
        for call in calls:
            with pytest.raises(RegistryUnavailable) as unavailable:
                call()
            assert isinstance(unavailable.value, DomainError)
    finally:
        pool.close()


def test_pooled_connections_read_timestamps_in_utc_itself(migrated_database_url):
    # datetime.UTC, not a zone named Etc/UTC: converting it again (every adapter does) is free.
    pool = make_pool(migrated_database_url, max_size=1)
    try:
        with pool.connection() as conn:
            row = conn.execute("SELECT now()").fetchone()
    finally:
        pool.close()
    assert row is not None and row[0].tzinfo is UTC


# --- the list's summaries and the read pool ----------------------------------------------------


@pytest.fixture
def read_pool(migrated_database_url):
    pool = make_read_pool(migrated_database_url, max_size=2, check_idle_after=0.3)
    yield pool
    pool.close()


def test_list_json_is_the_page_as_summaries_json_writes_it(pg_pool, read_pool, tenant):
    registry = PostgresFleetRegistry(pg_pool, read_pool=read_pool)
    base = datetime(2026, 3, 1, 9, 0, 0, tzinfo=UTC)
    # Whole seconds (isoformat leaves the fraction out), a fraction ending in zeros, any fraction;
    # reasons Postgres and Python escape alike, and ones only Python escapes (non-ASCII, DEL).
    rows = [
        (base, 'guest said "no"\\ \n\t\x01 </script>'),
        (base + timedelta(microseconds=120_000), "guest said «nein» 🙂"),
        (base + timedelta(microseconds=7), "rubout \x7f"),
        (base - timedelta(days=1), None),
    ]
    made = []
    for at, reason in rows:
        instance = registry.create(tenant)[0]
        with pg_pool.connection() as conn:
            conn.execute(
                "UPDATE instances SET created_at = %s, updated_at = %s + interval '1 day',"
                " reason = %s, address = '10.0.0.9' WHERE id = %s",
                (at, at, reason, instance.id),
            )
        made.append(instance.id)
    walk(registry, made[0], S.PROVISIONING)

    for filters in ({"tenant": tenant}, {"tenant": tenant, "statuses": [S.PENDING]}):
        for limit in (1, 2, 500):
            cursor = None
            while True:
                items, next_cursor = registry.list(limit=limit, cursor=cursor, **filters)
                text, json_cursor = registry.list_json(limit=limit, cursor=cursor, **filters)
                assert text == summaries_json([instance_summary(item) for item in items])
                assert json_cursor == next_cursor
                if next_cursor is None:
                    break
                cursor = next_cursor
    # Newest first: 120 ms after the base, 7 µs after it, the base, the day before.
    listed = json.loads(registry.list_json(tenant=tenant)[0])
    assert [item["id"] for item in listed] == [str(made[i]) for i in (1, 2, 0, 3)]
    assert registry.list_json(tenant=tenant, statuses=[])[0] == "[]"
    with pytest.raises(ValueError):
        registry.list_json(limit=0)
    with pytest.raises(InvalidCursor):
        registry.list_json(cursor="garbage")


# --- list_json's remembered pages (registry._PageMemory) -----------------------------------------


def _fresh(pg_pool, **query) -> tuple[str, str | None]:
    """The page as a registry that has remembered nothing reads it."""
    return PostgresFleetRegistry(pg_pool).list_json(**query)


def _served_from_memory(registry, seconds: float = 3, **query) -> bool:
    """Whether asking twice in a row handed out the same page object (a page read again is a new
    one). Any transaction that writes anywhere on the server in between (autovacuum's ANALYZE,
    another database's writes) moves the snapshot; trying for a few seconds finds a quiet moment."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        first = registry.list_json(**query)[0]
        if registry.list_json(**query)[0] is first:
            return True
    return False


def test_a_page_asked_for_again_while_nothing_is_written_comes_from_memory(
    pg_pool, read_pool, tenant
):
    registry = PostgresFleetRegistry(pg_pool, read_pool=read_pool)
    for _ in range(3):
        registry.create(tenant)
    query = {"tenant": tenant, "limit": 2}
    assert _served_from_memory(registry, **query)
    assert registry.list_json(**query) == _fresh(pg_pool, **query)
    # Each page for itself: the next one, and the first one with a filter.
    after = registry.list_json(**query)[1]
    assert _served_from_memory(registry, tenant=tenant, limit=2, cursor=after)
    assert _served_from_memory(registry, tenant=tenant, limit=2, statuses=[S.PENDING])


def _create_elsewhere(pg_pool, tenant):
    PostgresFleetRegistry(pg_pool).create(tenant)


def _move_elsewhere(pg_pool, tenant):
    (instance,), _ = PostgresFleetRegistry(pg_pool).list(tenant=tenant, limit=1)
    walk(PostgresFleetRegistry(pg_pool), instance.id, S.PROVISIONING)


def _delete_elsewhere(pg_pool, tenant):
    with pg_pool.connection() as conn:
        conn.execute("DELETE FROM instances WHERE tenant = %s", (tenant,))


@pytest.mark.parametrize("write", [_create_elsewhere, _move_elsewhere, _delete_elsewhere])
def test_a_remembered_page_never_hides_a_write_committed_before_the_read(
    pg_pool, read_pool, tenant, write
):
    # Another registry on another pool: a write by another gateway process or a worker.
    registry = PostgresFleetRegistry(pg_pool, read_pool=read_pool)
    registry.create(tenant)
    for query in ({"tenant": tenant}, {"tenant": tenant, "statuses": [S.PENDING]}):
        registry.list_json(**query)
    write(pg_pool, tenant)
    for query in ({"tenant": tenant}, {"tenant": tenant, "statuses": [S.PENDING]}):
        assert registry.list_json(**query) == _fresh(pg_pool, **query)


def test_pages_with_other_filters_are_remembered_apart(pg_pool, read_pool, tenant):
    registry = PostgresFleetRegistry(pg_pool, read_pool=read_pool)
    for _ in range(2):
        registry.create(tenant)
    (first, _), _ = registry.list(tenant=tenant, limit=2)
    walk(registry, first.id, S.PROVISIONING)
    for _ in range(2):  # the second time round, each from memory
        for statuses in ([S.PENDING], [S.PROVISIONING], [S.PENDING, S.PROVISIONING], []):
            query = {"tenant": tenant, "statuses": statuses}
            assert registry.list_json(**query) == _fresh(pg_pool, **query)
        for limit in (1, 2):
            assert registry.list_json(tenant=tenant, limit=limit) == _fresh(
                pg_pool, tenant=tenant, limit=limit
            )


def test_an_empty_page_is_not_mistaken_for_an_unchanged_one(pg_pool, read_pool, tenant):
    # The statement answers one row of NULLs both for an empty page and for "unchanged": only
    # the snapshot tells them apart.
    registry = PostgresFleetRegistry(pg_pool, read_pool=read_pool)
    assert registry.list_json(tenant=tenant) == ("[]", None)
    registry.create(tenant)
    assert json.loads(registry.list_json(tenant=tenant)[0])[0]["tenant"] == tenant
    _delete_elsewhere(pg_pool, tenant)
    assert registry.list_json(tenant=tenant) == ("[]", None)


def test_a_write_in_progress_at_the_first_read_shows_once_it_commits(
    pg_pool, read_pool, migrated_database_url, tenant
):
    # The writer takes its transaction id before the page is read, and a later transaction
    # commits before it too: the first read's snapshot lists the writer as in progress below its
    # xmax. The writer's commit then changes that list (and xmin), not xmax.
    registry = PostgresFleetRegistry(pg_pool, read_pool=read_pool)
    registry.create(tenant)
    with psycopg.connect(migrated_database_url) as writer:
        writer.execute(
            "UPDATE instances SET reason = 'written meanwhile' WHERE tenant = %s", (tenant,)
        )
        (mine,) = writer.execute("SELECT pg_current_xact_id()::text").fetchone()
        with psycopg.connect(migrated_database_url, autocommit=True) as other:
            other.execute("SELECT pg_current_xact_id()")  # an id, committed at once
            (snapshot,) = other.execute("SELECT pg_current_snapshot()::text").fetchone()
        before = registry.list_json(tenant=tenant)
        assert "written meanwhile" not in before[0]
        writer.commit()
    assert mine in snapshot.split(":")[2].split(","), snapshot
    assert "written meanwhile" in registry.list_json(tenant=tenant)[0]


def test_concurrent_reads_see_every_create_committed_before_they_began(pg_pool, read_pool, tenant):
    # A writer commits creates one by one and then counts them; readers note the count, then
    # list: a page may hold more rows than the count they noted, never fewer.
    registry = PostgresFleetRegistry(pg_pool, read_pool=read_pool)
    writer = PostgresFleetRegistry(pg_pool)
    committed = [0]
    stop = threading.Event()
    stale: list[tuple[int, int]] = []
    reads = [0]

    def write() -> None:
        for _ in range(40):
            writer.create(tenant)
            committed[0] += 1
        stop.set()

    def read() -> None:
        while not stop.is_set():
            noted = committed[0]
            seen = len(json.loads(registry.list_json(tenant=tenant, limit=500)[0]))
            reads[0] += 1
            if seen < noted:
                stale.append((noted, seen))

    threads = [threading.Thread(target=write)] + [threading.Thread(target=read) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not any(thread.is_alive() for thread in threads)
    assert not stale, stale[:5]
    assert reads[0] > 40
    assert len(json.loads(registry.list_json(tenant=tenant, limit=500)[0])) == 40


def test_the_page_memory_keeps_only_the_latest_pages(pg_pool, read_pool, tenant, monkeypatch):
    registry = PostgresFleetRegistry(pg_pool, read_pool=read_pool)
    for _ in range(3):
        registry.create(tenant)
    monkeypatch.setattr(registry_module, "PAGE_OVERHEAD_CHARS", 100)
    # Every page counts for its text, its snapshot and 100 more.
    costs = []
    for limit in (3, 4, 5):
        registry = PostgresFleetRegistry(pg_pool, read_pool=read_pool)
        registry.list_json(tenant=tenant, limit=limit)
        costs.append(registry._pages.used)
    # Room for four one-item pages' worth, and at most three pages of any size.
    small = PostgresFleetRegistry(pg_pool, read_pool=read_pool)
    small.list_json(tenant=tenant, limit=1)
    monkeypatch.setattr(registry_module, "PAGE_MEMORY_CHARS", 4 * small._pages.used)
    monkeypatch.setattr(registry_module, "PAGES_REMEMBERED", 3)
    registry = PostgresFleetRegistry(pg_pool, read_pool=read_pool)
    for status in [*Status, *Status]:  # one-item and empty pages: the page count binds
        registry.list_json(tenant=tenant, statuses=[status], limit=1)
    assert len(registry._pages) == 3
    for _ in range(2):  # pages of three items, each nearly half the budget: two fit
        for limit in (3, 4, 5):
            registry.list_json(tenant=tenant, limit=limit)
    assert registry._pages.used <= 4 * small._pages.used
    assert 1 <= len(registry._pages) <= 3
    assert costs == sorted(costs) and costs[0] > small._pages.used  # bigger pages count for more
    assert _served_from_memory(registry, tenant=tenant, limit=5)
    # A page larger than the whole budget is not kept, and nothing is forgotten for it.
    held = len(registry._pages)
    epoch = registry._pages._epoch
    registry._pages.put(
        ("huge",), registry_module._Page("", epoch, "x" * (5 * small._pages.used), None)
    )
    assert len(registry._pages) == held


def test_a_read_on_the_read_pool_opens_no_transaction(pg_pool, read_pool, migrated_database_url):
    with read_cursor(read_pool, "down") as cur:
        cur.execute("SELECT 1")
        assert cur.connection.info.transaction_status == TransactionStatus.IDLE
    # Any other pool: the read is in a transaction of its own, as pooled_cursor's.
    with read_cursor(pg_pool, "down") as cur:
        cur.execute("SELECT 1")
        assert cur.connection.info.transaction_status == TransactionStatus.INTRANS


@pytest.mark.parametrize("autocommit", [True, False], ids=["read-pool", "other-pool"])
def test_a_read_that_fails_gives_its_connection_back_ready_for_the_next(
    migrated_database_url, autocommit
):
    if autocommit:
        pool = make_read_pool(migrated_database_url, max_size=1, timeout=2)
    else:
        pool = make_pool(migrated_database_url, min_size=1, max_size=1, timeout=2)
    try:
        with pytest.raises(psycopg.errors.UndefinedTable), read_cursor(pool, "down") as cur:
            cur.execute("SELECT * FROM no_such_table")
        with pytest.raises(RuntimeError, match="own"), read_cursor(pool, "down") as cur:
            cur.execute("SELECT 1")
            raise RuntimeError("the caller's own")
        # The pool's only connection came back both times, out of any failed transaction.
        with read_cursor(pool, "down") as cur:
            assert cur.execute("SELECT 1 AS one").fetchone() == {"one": 1}
    finally:
        pool.close()


def _kill_read_pool_backends(database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as admin:
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            " AND application_name = 'dark-read-pool-test'"
        )


def test_the_read_pool_checks_a_connection_only_after_it_sat_idle(migrated_database_url):
    pool = make_read_pool(
        migrated_database_url,
        max_size=1,
        check_idle_after=0.3,
        application_name="dark-read-pool-test",
    )
    try:
        registry = PostgresFleetRegistry(pool, read_pool=pool)
        registry.list_json(limit=1)

        # Used a moment ago: not checked, so a connection the server dropped fails this one read...
        _kill_read_pool_backends(migrated_database_url)
        with pytest.raises(RegistryUnavailable):
            registry.list_json(limit=1)
        # ...and the pool replaces it.
        wait_for(lambda: _lists(registry))

        # Idle past the limit (as across a Postgres restart): checked, replaced, nothing fails.
        _kill_read_pool_backends(migrated_database_url)
        time.sleep(0.5)
        registry.list_json(limit=1)
    finally:
        pool.close()


def test_a_connection_goes_back_to_the_read_pool_without_a_task_for_its_workers(
    migrated_database_url,
):
    # A task on the pool's worker thread per return would be a thread wake-up per request.
    pool = make_read_pool(migrated_database_url, max_size=1)
    tasks: list[str] = []
    run_task = pool.run_task
    pool.run_task = lambda task: (tasks.append(type(task).__name__), run_task(task))[1]
    try:
        registry = PostgresFleetRegistry(pool, read_pool=pool)
        for _ in range(3):
            registry.list_json(limit=1)
    finally:
        pool.close()
    assert "ReturnConnection" not in tasks


def test_the_first_page_statement_runs_on_a_plan_postgres_keeps(
    migrated_database_url, pg_pool, tenant
):
    # A prepared statement that Postgres plans afresh on every execution costs it a whole planning
    # per request. The first page (no filter) is the statement asked for most: once Postgres has
    # tried its 5 custom plans it must settle on the generic one. (It did not while the LIMIT was
    # a parameter: over a table of realistic size a generic plan that cannot know the limit costs
    # far more than any custom plan.)
    bulk_insert(pg_pool, tenant, 20_000, datetime(2026, 1, 1, tzinfo=UTC))
    with pg_pool.connection() as conn:
        conn.execute("ANALYZE instances")
    pool = make_read_pool(migrated_database_url, max_size=1)
    try:
        registry = PostgresFleetRegistry(pool, read_pool=pool)
        for _ in range(12):
            registry.list_json(limit=100)
        with pool.connection() as conn:
            plans = conn.execute(
                "SELECT generic_plans, custom_plans FROM pg_prepared_statements"
                " WHERE statement LIKE '%TRUE, summary_json FROM instances%'"
            ).fetchall()
    finally:
        pool.close()
    assert len(plans) == 1, plans
    generic, custom = plans[0]
    assert generic > 0 and custom <= 5, f"{generic} generic plans, {custom} custom plans"


def _lists(registry) -> bool:
    try:
        registry.list_json(limit=1)
    except RegistryUnavailable:
        return False
    return True


def wait_for(predicate, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)
