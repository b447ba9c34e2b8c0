"""The cloud operation budget as the pipeline uses it, over fakes: rows wait in line, oldest first,
without a worker; a lasting quota fails the row naming it (docs/ARCHITECTURE.md#capacity)."""

import dataclasses
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from shared.adapters.yc import cloud_error
from shared.domain.capacity import WAITING_REASON, Admission, Mutation
from shared.domain.errors import CloudQuotaExhausted, CloudTransient
from shared.domain.lifecycle import Status
from shared.domain.records import OperationState, VmSpec
from shared.domain.tenants import TenantName
from shared.service_layer.capacity import (
    HANDED_OVER_POLL_SECS,
    MAX_CAPACITY_POLL_SECS,
    MAX_HANDED_OVER_POLL_SECS,
    NEXT_IN_LINE_POLL_SECS,
    poll_delay,
)
from shared.service_layer.pipeline import Pipeline
from shared.service_layer.reconcile import STALL_SECS, ActionKind, decide
from shared.settings import Settings
from tests.fakes import (
    FakeCompute,
    FakeDispatcher,
    FakeLocks,
    FakeOperationBudget,
    FakeRegistry,
    queue_down,
)

T0 = datetime(2030, 1, 1, tzinfo=UTC)


class SlowCompute(FakeCompute):
    """A create whose operation is still running: the slot stays held."""

    def create_instance(self, spec: VmSpec) -> OperationState:
        done = super().create_instance(spec)
        running = dataclasses.replace(done, done=False)
        self.operations[running.operation_id] = running
        return running


class QuotaCompute(FakeCompute):
    def create_instance(self, spec: VmSpec) -> OperationState:
        raise cloud_error(
            "RESOURCE_EXHAUSTED", "Quota limit compute.instances.count exceeded", "create VM x"
        )


def make_pipeline(
    budget: int, compute: FakeCompute | None = None, dispatcher: FakeDispatcher | None = None
):
    registry = FakeRegistry(now=T0)
    capacity = FakeOperationBudget(registry, budget)
    pipeline = Pipeline(
        registry=registry,
        compute=compute or SlowCompute(),
        guest=None,  # never reached: these rows stop before their guest is called
        secrets=None,
        bundles=None,
        locks=FakeLocks(),
        capacity=capacity,
        settings=Settings(yc_max_concurrent_operations=budget),
        dispatcher=dispatcher,
    )
    return pipeline, registry, capacity


def pending_rows(registry: FakeRegistry, n: int):
    rows = []
    for i in range(n):
        row, _ = registry.create(TenantName(f"t{i}"))
        # Created one second apart: the queue's order.
        row = dataclasses.replace(row, created_at=T0 + timedelta(seconds=i))
        registry.rows[row.id] = row
        rows.append(row)
    return rows


def advance(pipeline: Pipeline, registry: FakeRegistry, row):
    return pipeline.advance(row.id, registry.rows[row.id].wake_token)


def test_rows_beyond_the_budget_stay_pending_saying_why_and_come_back_without_sleeping():
    pipeline, registry, capacity = make_pipeline(budget=2)
    rows = pending_rows(registry, 3)
    for row in rows:
        advance(pipeline, registry, row)
    step = advance(pipeline, registry, rows[2])

    assert [registry.rows[r.id].status for r in rows] == [
        Status.PROVISIONING,
        Status.PROVISIONING,
        Status.PENDING,
    ]
    assert registry.rows[rows[2].id].reason == WAITING_REASON
    assert (
        step.delay == NEXT_IN_LINE_POLL_SECS and step.token == registry.rows[rows[2].id].wake_token
    )
    assert capacity.usage().in_use == 2 and capacity.usage().waiting == 1


def test_a_newer_row_never_takes_the_slot_an_older_waiting_row_is_owed():
    pipeline, registry, capacity = make_pipeline(budget=2)
    a, b, c, d = pending_rows(registry, 4)
    advance(pipeline, registry, d)  # three older rows wait ahead of it
    advance(pipeline, registry, a)
    advance(pipeline, registry, c)  # b is older and still waits: c must not take the last slot
    advance(pipeline, registry, b)

    status = {
        name: registry.rows[r.id].status for name, r in zip("abcd", (a, b, c, d), strict=True)
    }
    assert status == {
        "a": Status.PROVISIONING,
        "b": Status.PROVISIONING,
        "c": Status.PENDING,
        "d": Status.PENDING,
    }
    assert set(capacity.slots) == {a.id, b.id}


def test_a_slot_is_released_when_the_create_operation_is_seen_done():
    compute = SlowCompute()
    pipeline, registry, capacity = make_pipeline(budget=1, compute=compute)
    first, second = pending_rows(registry, 2)
    advance(pipeline, registry, first)
    advance(pipeline, registry, second)
    assert registry.rows[second.id].status is Status.PENDING

    op_id = registry.rows[first.id].operation_id
    compute.operations[op_id] = dataclasses.replace(compute.operations[op_id], done=True)
    advance(pipeline, registry, first)  # done: released (then fails on the fake's missing address)
    advance(pipeline, registry, second)

    assert registry.rows[second.id].status is Status.PROVISIONING
    assert set(capacity.slots) == {second.id}


def test_a_lasting_quota_fails_the_row_naming_the_quota_and_frees_its_slot():
    pipeline, registry, capacity = make_pipeline(budget=2, compute=QuotaCompute())
    (row,) = pending_rows(registry, 1)
    advance(pipeline, registry, row)

    failed = registry.rows[row.id]
    assert failed.status is Status.FAILED
    assert "compute.instances.count" in failed.reason and "instances per cloud" in failed.reason
    assert capacity.slots == {}


@pytest.mark.parametrize(
    ("message", "quota"),
    [
        ("Quota limit compute.instances.count exceeded", "compute.instances.count"),
        ("Quota limit compute.instanceCores.count exceeded", "compute.instanceCores.count"),
        ("Quota limit compute.instanceMemory.size exceeded", "compute.instanceMemory.size"),
    ],
)
def test_quotas_waiting_cannot_fix_are_permanent_and_named(message, quota):
    error = cloud_error("RESOURCE_EXHAUSTED", message)
    assert isinstance(error, CloudQuotaExhausted) and error.quota == quota
    assert quota in str(error)


@pytest.mark.parametrize(
    "message",
    ["Quota limit compute.operationsInProgress.count exceeded", "Request rate limit exceeded", ""],
)
def test_the_operations_quota_and_the_rate_limit_stay_transient(message):
    assert type(cloud_error("RESOURCE_EXHAUSTED", message)) is CloudTransient


def test_rows_further_back_ask_less_often_up_to_a_cap():
    assert poll_delay(Admission(False, ahead=0), 15) == NEXT_IN_LINE_POLL_SECS
    assert poll_delay(Admission(False, ahead=14), 15) == NEXT_IN_LINE_POLL_SECS
    assert poll_delay(Admission(False, ahead=15), 15) == 2 * NEXT_IN_LINE_POLL_SECS
    assert poll_delay(Admission(False, ahead=10_000), 15) == MAX_CAPACITY_POLL_SECS


def test_a_delete_jumps_the_create_queue():
    registry = FakeRegistry(now=T0)
    capacity = FakeOperationBudget(registry, 2)
    waiting, holding, leaving = pending_rows(registry, 3)
    registry.rows[holding.id] = dataclasses.replace(holding, status=Status.PROVISIONING)
    registry.rows[leaving.id] = dataclasses.replace(leaving, status=Status.TEARING_DOWN)
    capacity.slots[holding.id] = Mutation.CREATE

    assert capacity.acquire(leaving.id, Mutation.DELETE).granted
    assert not capacity.acquire(waiting.id, Mutation.CREATE).granted


def test_reconcile_does_not_call_a_row_waiting_in_line_stuck():
    registry = FakeRegistry(now=T0)
    (row,) = pending_rows(registry, 1)
    old = T0 - timedelta(hours=2)
    waiting = dataclasses.replace(
        row, reason=WAITING_REASON, status_changed_at=old, updated_at=T0 - timedelta(seconds=1)
    )
    stuck = dataclasses.replace(waiting, id=uuid.uuid4(), reason="provision requested")
    settings = Settings(reconcile_stuck=1800)
    actions = decide([], [waiting, stuck], settings, T0)
    assert [(a.kind, a.instance.id) for a in actions] == [(ActionKind.STUCK, stuck.id)]


def finish_create(compute: SlowCompute, registry: FakeRegistry, row) -> None:
    op_id = registry.rows[row.id].operation_id
    compute.operations[op_id] = dataclasses.replace(compute.operations[op_id], done=True)


def test_a_freed_slot_is_handed_over_at_once_to_the_oldest_waiter_under_a_fresh_token():
    compute, dispatcher = SlowCompute(), FakeDispatcher()
    pipeline, registry, capacity = make_pipeline(budget=1, compute=compute, dispatcher=dispatcher)
    first, second, third = pending_rows(registry, 3)
    advance(pipeline, registry, first)
    for row in (third, second):
        advance(pipeline, registry, row)
    delayed = registry.rows[second.id].wake_token  # its own message, due in a few seconds

    finish_create(compute, registry, first)
    advance(pipeline, registry, first)  # sees the operation done: frees the slot

    (woken,) = dispatcher.sent  # the oldest waiter only: one slot was freed
    assert woken[:2] == (second.id, Status.PENDING)
    assert woken[2] == registry.rows[second.id].wake_token != delayed
    assert pipeline.advance(second.id, delayed).delay is None  # the delayed message is stale
    assert registry.rows[second.id].status is Status.PENDING
    pipeline.advance(second.id, woken[2])
    assert registry.rows[second.id].status is Status.PROVISIONING
    assert set(capacity.slots) == {second.id}


def test_no_waiter_is_woken_when_nothing_was_freed():
    dispatcher = FakeDispatcher()
    pipeline, registry, capacity = make_pipeline(budget=1, dispatcher=dispatcher)
    holder, waiter = pending_rows(registry, 2)
    advance(pipeline, registry, holder)
    advance(pipeline, registry, waiter)

    assert capacity.release(waiter.id) is False  # it held none
    pipeline._release(registry.rows[waiter.id])
    assert dispatcher.sent == []


def test_a_waiter_whose_wake_cannot_be_sent_keeps_its_delayed_message():
    compute = SlowCompute()
    dispatcher = FakeDispatcher(on_send=queue_down)
    pipeline, registry, _ = make_pipeline(budget=1, compute=compute, dispatcher=dispatcher)
    first, second = pending_rows(registry, 2)
    advance(pipeline, registry, first)
    advance(pipeline, registry, second)
    delayed = registry.rows[second.id].wake_token

    finish_create(compute, registry, first)
    advance(pipeline, registry, first)

    assert dispatcher.sent == []
    assert registry.rows[second.id].wake_token == delayed
    pipeline.advance(second.id, delayed)
    assert registry.rows[second.id].status is Status.PROVISIONING


def test_with_a_hand_over_waiters_ask_on_their_own_only_as_a_backstop():
    pipeline, registry, _ = make_pipeline(budget=1, dispatcher=FakeDispatcher())
    holder, waiter = pending_rows(registry, 2)
    advance(pipeline, registry, holder)
    assert advance(pipeline, registry, waiter).delay == HANDED_OVER_POLL_SECS
    assert HANDED_OVER_POLL_SECS > NEXT_IN_LINE_POLL_SECS


def test_a_waiter_far_back_still_asks_before_reconcile_would_call_its_chain_gone():
    far_back = poll_delay(Admission(False, ahead=10_000), 15, handed_over=True)
    assert far_back == MAX_HANDED_OVER_POLL_SECS < STALL_SECS
