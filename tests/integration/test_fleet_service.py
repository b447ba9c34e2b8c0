"""FleetService.provision when the task queue is down, on the real registry (Postgres).

The dispatcher is a stand-in: what it does on `send` is the whole point of each test (the gateway
tests in test_api.py cover the same answers with a real, unreachable Redis).
"""

import secrets
import uuid

import pytest

from shared.adapters.registry import PostgresFleetRegistry
from shared.domain.errors import DispatchUnavailable, RegistryUnavailable
from shared.domain.lifecycle import Status
from shared.service_layer.fleet import FleetService
from tests.fakes import FakeDispatcher, queue_down


@pytest.fixture
def registry(pg_pool):
    return PostgresFleetRegistry(pg_pool)


@pytest.fixture
def tenant(pg_pool):
    name = f"fleet-{secrets.token_hex(6)}"
    yield name
    with pg_pool.connection() as conn:
        conn.execute("DELETE FROM instances WHERE tenant = %s", (name,))


def fleet(registry, dispatcher) -> FleetService:
    return FleetService(registry, dispatcher, max_instances_per_tenant=5)


# --- the registry's withdraw ---------------------------------------------------------------------


def test_withdraw_deletes_an_untouched_pending_row_with_its_events(registry, tenant):
    instance, _ = registry.create(tenant)
    assert registry.withdraw(instance.id, instance.wake_token) is True
    assert registry.get(instance.id) is None
    assert registry.events(instance.id) == []
    assert registry.withdraw(instance.id, instance.wake_token) is False


def test_withdraw_keeps_a_row_whose_token_or_status_moved_on(registry, tenant):
    resumed, _ = registry.create(tenant)
    registry.update(resumed.id, Status.PENDING, wake_token=uuid.uuid4())
    assert registry.withdraw(resumed.id, resumed.wake_token) is False
    assert registry.get(resumed.id).status is Status.PENDING

    started, _ = registry.create(tenant)
    registry.transition(started.id, Status.PENDING, Status.PROVISIONING, "picked up")
    assert registry.withdraw(started.id, started.wake_token) is False
    assert registry.get(started.id).status is Status.PROVISIONING


# --- provision with the queue down -----------------------------------------------------------


def test_a_new_request_the_queue_cannot_take_leaves_no_row(registry, tenant):
    with pytest.raises(DispatchUnavailable, match="nothing was recorded"):
        fleet(registry, FakeDispatcher(queue_down)).provision(
            tenant, request_key=None, request_id=None
        )
    assert registry.list(tenant=tenant) == ([], None)
    assert registry.count_live(tenant) == 0


def test_a_row_a_worker_resumed_meanwhile_is_answered_as_accepted(registry, tenant):
    def resumed_then_down(instance):
        # Redis came back for an instant: a worker's resume-on-connect gave the row a fresh token.
        registry.update(instance.id, Status.PENDING, wake_token=uuid.uuid4())
        raise DispatchUnavailable("the task queue is unreachable")

    instance, task_id = fleet(registry, FakeDispatcher(resumed_then_down)).provision(
        tenant, request_key=None, request_id=None
    )
    assert task_id
    [row] = registry.list(tenant=tenant)[0]
    assert row.id == instance.id and row.wake_token == instance.wake_token


def test_a_repeated_request_whose_row_was_accepted_earlier_keeps_its_row(registry, tenant):
    first, _ = fleet(registry, FakeDispatcher()).provision(
        tenant, request_key="order-1", request_id=None
    )
    with pytest.raises(DispatchUnavailable):
        fleet(registry, FakeDispatcher(queue_down)).provision(
            tenant, request_key="order-1", request_id=None
        )
    assert [i.id for i in registry.list(tenant=tenant)[0]] == [first.id]


def test_when_the_registry_fails_too_the_answer_names_the_row_it_keeps(registry, tenant):
    class WithdrawFails:
        def __getattr__(self, name):
            return getattr(registry, name)

        def withdraw(self, instance_id, token):
            raise RegistryUnavailable("the fleet registry database is unreachable")

    with pytest.raises(DispatchUnavailable) as raised:
        fleet(WithdrawFails(), FakeDispatcher(queue_down)).provision(
            tenant, request_key=None, request_id=None
        )
    [row] = registry.list(tenant=tenant)[0]
    assert raised.value.details == {"instance_id": row.id}


def test_a_repeat_accepted_while_the_first_request_is_failing_is_never_withdrawn(registry, tenant):
    """R1 creates the row and its send fails; before R1 takes the row back, R2 (the client's retry
    with the same Idempotency-Key) re-sends and is answered 202. R1 must then not delete the row R2
    answered with: R2's message would find nothing and the accepted request would be lost."""
    answers = {}

    def repeat_succeeds_first(_instance) -> None:
        answers["r2"], _ = fleet(registry, FakeDispatcher()).provision(
            tenant, request_key="k-repeat", request_id=None
        )
        raise DispatchUnavailable("the task queue is unreachable")

    r1, _ = fleet(registry, FakeDispatcher(on_send=repeat_succeeds_first)).provision(
        tenant, request_key="k-repeat", request_id=None
    )
    kept = registry.get(answers["r2"].id)
    assert kept is not None, "the row a 202 was answered with was withdrawn"
    assert r1.id == kept.id and kept.wake_token == answers["r2"].wake_token


# --- a worker's resume sweep ---------------------------------------------------------------------


def test_a_row_withdrawn_during_a_workers_resume_sweep_is_passed_over(registry, tenant):
    """The sweep lists the unfinished rows, then gives each a fresh token; a gateway withdrawing
    one in between (its 503 taking the row back) must not stop the sweep for the rest."""
    from shared.service_layer.pipeline import resume_unfinished

    withdrawn, _ = registry.create(tenant)
    kept, _ = registry.create(tenant)

    class WithdrawnMeanwhile(PostgresFleetRegistry):
        def list_by_statuses(self, statuses):
            rows = super().list_by_statuses(statuses)
            registry.withdraw(withdrawn.id, withdrawn.wake_token)
            return [row for row in rows if row.tenant == tenant]

    sent = []
    resumed = resume_unfinished(
        WithdrawnMeanwhile(registry._pool), lambda inst, token: sent.append(inst.id)
    )
    assert sent == [kept.id] and resumed == 1
