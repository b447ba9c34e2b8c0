"""The operation budget on Postgres and the simulator's quotas, each against its real peer
(docs/ARCHITECTURE.md#capacity)."""

import uuid

import pytest
import requests

from shared.adapters.capacity import PostgresOperationBudget
from shared.adapters.db import make_pool
from shared.adapters.registry import PostgresFleetRegistry
from shared.adapters.yc import YcCompute
from shared.domain.capacity import Mutation
from shared.domain.errors import CloudQuotaExhausted, CloudTransient
from shared.domain.lifecycle import Status
from shared.domain.records import VmSpec
from shared.domain.tenants import TenantName
from shared.settings import load_settings
from tests.conftest import PG_ADMIN_DSN
from tests.support.processes import start_simulator
from tests.support.stack import private_database


@pytest.fixture(scope="module")
def pool():
    # A database of its own: the queue is every pending row of the registry.
    with private_database(PG_ADMIN_DSN) as url:
        pool = make_pool(url, max_size=4)
        yield pool
        pool.close()


@pytest.fixture
def registry(pool):
    with pool.connection() as conn:
        conn.execute("DELETE FROM instances")
    return PostgresFleetRegistry(pool)


def rows(registry, n: int):
    return [registry.create(TenantName(f"cap-{uuid.uuid4().hex[:8]}"))[0] for _ in range(n)]


def test_no_more_slots_than_the_budget_and_the_oldest_waiter_goes_first(pool, registry):
    budget = PostgresOperationBudget(pool, 2)
    a, b, c, d = rows(registry, 4)

    assert not budget.acquire(d.id, Mutation.CREATE).granted  # three older rows ahead
    assert budget.acquire(d.id, Mutation.CREATE).ahead == 3
    assert budget.acquire(a.id, Mutation.CREATE).granted
    assert not budget.acquire(c.id, Mutation.CREATE).granted  # b is older: the slot is b's
    assert budget.acquire(b.id, Mutation.CREATE).granted
    assert budget.acquire(b.id, Mutation.CREATE).granted  # asking again while holding it
    usage = budget.usage()
    assert (usage.in_use, usage.waiting) == (2, 2)

    registry.transition(a.id, Status.PENDING, Status.PROVISIONING, "creating")
    budget.release(a.id)  # its operation is done
    assert budget.acquire(c.id, Mutation.CREATE).granted


def test_a_slot_whose_row_moved_on_is_reclaimed_without_its_holder(pool, registry):
    budget = PostgresOperationBudget(pool, 1)
    holder, waiter = rows(registry, 2)
    assert budget.acquire(holder.id, Mutation.CREATE).granted
    registry.transition(holder.id, Status.PENDING, Status.PROVISIONING, "creating")
    assert not budget.acquire(waiter.id, Mutation.CREATE).granted

    # Its worker died, and reconcile failed the stuck row: nobody calls release.
    registry.transition(holder.id, Status.PROVISIONING, Status.FAILED, "stuck")
    assert budget.usage().in_use == 0
    assert budget.acquire(waiter.id, Mutation.CREATE).granted


def test_next_in_line_is_the_oldest_waiters_the_free_slots_would_be_granted_to(pool, registry):
    budget = PostgresOperationBudget(pool, 2)
    a, b, c, _ = rows(registry, 4)
    assert budget.next_in_line() == [a.id, b.id]
    assert budget.acquire(a.id, Mutation.CREATE).granted
    registry.transition(a.id, Status.PENDING, Status.PROVISIONING, "creating")
    assert budget.next_in_line() == [b.id]  # one slot left
    assert budget.acquire(b.id, Mutation.CREATE).granted
    assert budget.next_in_line() == []

    assert budget.release(a.id) is True
    assert budget.release(a.id) is False  # nothing left to free
    assert budget.next_in_line() == [c.id]
    assert budget.acquire(c.id, Mutation.CREATE).granted  # the one it names is granted


def test_a_delete_needs_a_free_slot_but_not_a_place_in_the_create_queue(pool, registry):
    budget = PostgresOperationBudget(pool, 1)
    waiting, leaving = rows(registry, 2)
    registry.transition(leaving.id, Status.PENDING, Status.TEARING_DOWN, "teardown")
    assert budget.acquire(leaving.id, Mutation.DELETE).granted
    assert not budget.acquire(waiting.id, Mutation.CREATE).granted


# --- the simulator's quotas -----------------------------------------------------------------


@pytest.fixture(scope="module")
def quota_sim(tmp_path_factory):
    sim = start_simulator(
        tmp_path_factory.mktemp("quota-sim"), "--operation-delay", "5", "--quota-operations", "2"
    )
    yield sim
    sim.stop()


@pytest.fixture
def compute(quota_sim):
    quota_sim.admin("POST", "/reset")
    folder = f"folder-{uuid.uuid4().hex[:12]}"
    compute = YcCompute.from_settings(load_settings({**quota_sim.yc_env(), "YC_FOLDER_ID": folder}))
    yield compute
    quota_sim.admin(
        "POST", "/cloud/quotas", json={"operations": 2, "instances": None, "cores": None}
    )


def spec() -> VmSpec:
    return VmSpec(
        name=f"dark-vm-{uuid.uuid4()}", idempotency_key=str(uuid.uuid4()), labels={}, image_id="i"
    )


def test_the_operations_quota_answers_resource_exhausted_on_the_rpc_and_is_counted(
    quota_sim, compute
):
    compute.create_instance(spec())
    compute.create_instance(spec())
    with pytest.raises(CloudTransient) as raised:
        compute.create_instance(spec())

    assert raised.value.code == "RESOURCE_EXHAUSTED"
    assert "compute.operationsInProgress.count" in str(raised.value)
    report = quota_sim.admin("GET", "/cloud/quotas")
    assert report["resource_exhausted"] == 1
    assert report["max_concurrent_operations"] == 2
    assert report["usage"]["operations"] == 2


@pytest.mark.parametrize(
    ("limit", "quota"),
    [({"instances": 1}, "compute.instances.count"), ({"cores": 3}, "compute.instanceCores.count")],
)
def test_instance_and_core_quotas_fail_a_create_naming_the_quota(quota_sim, compute, limit, quota):
    quota_sim.admin("POST", "/cloud/quotas", json=limit)
    compute.create_instance(spec())  # 2 cores by default
    with pytest.raises(CloudQuotaExhausted) as raised:
        compute.create_instance(spec())
    assert raised.value.quota == quota and quota in str(raised.value)


def test_the_admin_api_rejects_a_malformed_quota(quota_sim):
    url = quota_sim.admin_url + "/cloud/quotas"
    for body in ({"operations": -1}, {"instances": "ten"}, {"nonsense": 1}, {"rate": 0}):
        resp = requests.post(url, json=body, timeout=5)
        assert resp.status_code == 400, body
        assert resp.json()["error"]["code"] == "invalid_argument"
