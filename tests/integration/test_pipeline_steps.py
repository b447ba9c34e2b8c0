"""The pipeline step by step, with no broker: each `Pipeline.advance` is one message.

The pipeline runs in-process over its real adapters: PostgresFleetRegistry and PostgresLocks on the
session database, YcCompute and HttpGuestAgent against the simulator, EnvelopeBundleStore on
OpenBao transit, HvacTenantSecrets on OpenBao KV. The test is the worker: it sends the next message
(the returned token) at once instead of after the step's delay, and after every step checks the
row, the returned `Step`, the row's events, and what the cloud, the guest and the bundle store hold.
"""

import secrets
import time
import uuid

import pytest

from shared.adapters.bundles import EnvelopeBundleStore
from shared.adapters.capacity import PostgresOperationBudget
from shared.adapters.guest import HttpGuestAgent
from shared.adapters.locks import PostgresLocks
from shared.adapters.registry import PostgresFleetRegistry
from shared.adapters.vault_client import vault_client
from shared.adapters.vault_kv import HvacTenantSecrets
from shared.adapters.vault_transit import TransitKeys
from shared.adapters.waits import PostgresWaitHistory
from shared.adapters.yc import YcCompute
from shared.domain.lifecycle import Status
from shared.domain.secrets import ForgeCredential, Secret, TenantSecrets
from shared.domain.waits import WaitKind, WaitSample
from shared.service_layer.pipeline import (
    DONE,
    GUEST_POLL_SECS,
    OPERATION_POLL_SECS,
    Pipeline,
    Step,
)
from shared.service_layer.polling import Waits
from shared.settings import load_settings

CREDENTIAL_CALLS = ("init", "export", "import", "claude")


class Harness:
    def __init__(self, simulator, openbao, pool) -> None:
        self.sim = simulator
        self.settings = load_settings(
            {
                **simulator.yc_env(),
                "YC_FOLDER_ID": "steps-" + secrets.token_hex(4),
                "DARK_DEPLOYMENT": "steps-" + secrets.token_hex(3),
                "DATABASE_URL": "postgresql://unused",
                "VAULT_ADDR": openbao.addr,
                "VAULT_TOKEN": openbao.token,
                "DARK_GUEST_TIMEOUT_SECS": "3",
            }
        )
        vault = vault_client(self.settings)
        self.registry = PostgresFleetRegistry(pool)
        self.compute = YcCompute.from_settings(self.settings)
        self.secrets = HvacTenantSecrets(vault, kv_mount=self.settings.vault_kv_mount)
        self.bundles = EnvelopeBundleStore(
            pool, TransitKeys(vault, key_name=self.settings.bundle_key_name)
        )
        self.pool = pool
        self.pipeline = self.pipeline_with(Waits())

    def pipeline_with(self, waits: Waits) -> Pipeline:
        return Pipeline(
            registry=self.registry,
            compute=self.compute,
            guest=HttpGuestAgent.from_settings(self.settings),
            secrets=self.secrets,
            bundles=self.bundles,
            locks=PostgresLocks(self.pool),
            capacity=PostgresOperationBudget(self.pool, self.settings.yc_max_concurrent_operations),
            settings=self.settings,
            waits=waits,
        )

    def onboarded_tenant(self) -> str:
        tenant = f"steps-{secrets.token_hex(4)}"
        self.secrets.write(
            tenant,
            TenantSecrets(
                claude_oauth_token=Secret("sk-ant-oat01-" + secrets.token_urlsafe(32)),
                nks_pat=Secret("nks-" + secrets.token_urlsafe(16)),
                forges=(ForgeCredential("gh", "github.com", Secret("ghp_" + "x" * 24)),),
            ),
        )
        return tenant

    def credential_calls(self, provider_id: str) -> list[str]:
        """The credentials calls the VM's guest answered with 200, in order."""
        by_vm = self.sim.admin("GET", "/guests/calls")["by_vm"]
        calls = by_vm.get(provider_id, [])
        return [
            c["method"] for c in calls if c["status"] == 200 and c["method"] in CREDENTIAL_CALLS
        ]

    def guest_view(self, provider_id: str) -> dict:
        return self.sim.admin("GET", f"/guests/vms/{provider_id}")

    def moves(self, instance_id: uuid.UUID) -> list[tuple]:
        return [(e.from_status, e.to_status) for e in self.registry.events(instance_id)]


@pytest.fixture(scope="module")
def harness(simulator, openbao, pg_pool):
    return Harness(simulator, openbao, pg_pool)


class Chain:
    """One instance's chain of messages, each sent as soon as the previous step returns."""

    def __init__(self, pipeline: Pipeline, instance_id: uuid.UUID) -> None:
        self.pipeline = pipeline
        self.instance_id = instance_id
        self.token = pipeline.registry.get(instance_id).wake_token

    def step(self) -> Step:
        sent = self.token
        step = self.pipeline.advance(self.instance_id, sent)
        if step.token is not None:
            # Every wait hands on a fresh token, and the message just handled is stale now.
            assert step.token != sent
            assert self.pipeline.advance(self.instance_id, sent) == DONE
            self.token = step.token
        return step

    def poll(self, status: Status, delay: float, timeout: float = 30):
        """Steps while the row stays in `status`, each a wait of `delay` under the row's new
        token; returns the first step that moved it on, and the row."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            step = self.step()
            row = self.pipeline.registry.get(self.instance_id)
            if row.status is not status:
                return step, row
            assert step == Step(delay=delay, token=row.wake_token)
            time.sleep(0.05)  # instead of the step's delay: the simulator is fast
        raise AssertionError(f"still {status} after {timeout} s")


def provision_step_by_step(harness: Harness, tenant: str):
    """pending → provisioning → (operation polls) → initializing → (guest polls) → ready."""
    registry = harness.registry
    instance, _ = registry.create(tenant)
    assert instance.status is Status.PENDING
    chain = Chain(harness.pipeline, instance.id)

    # pending → provisioning, and the create is sent: the operation is persisted at once.
    step = chain.step()
    row = registry.get(instance.id)
    assert row.status is Status.PROVISIONING
    assert row.operation_id and row.provider_id
    assert step == Step(delay=OPERATION_POLL_SECS, token=row.wake_token)
    assert harness.moves(instance.id)[-1] == (Status.PENDING, Status.PROVISIONING)
    vm = harness.compute.get_instance(row.provider_id)
    assert vm is not None and vm.name == row.vm_name
    assert vm.labels["deployment"] == harness.settings.deployment
    assert vm.labels["instance"] == str(instance.id)

    # Operation polls until the VM runs; then initializing at the VM's address.
    step, row = chain.poll(Status.PROVISIONING, OPERATION_POLL_SECS)
    vm = harness.compute.get_instance(row.provider_id)
    assert vm.status == "RUNNING"
    assert row.address == vm.address
    assert (Status.PROVISIONING, Status.INITIALIZING) in harness.moves(instance.id)
    if row.status is Status.INITIALIZING:
        # The guest was still booting (it answers 503 for a moment after RUNNING).
        assert step == Step(delay=GUEST_POLL_SECS, token=row.wake_token)
        assert harness.credential_calls(row.provider_id) == []
        step, row = chain.poll(Status.INITIALIZING, GUEST_POLL_SECS)

    assert row.status is Status.READY, row.reason
    assert step == DONE
    assert step.delay is None and step.token is None and step.transient is None
    assert harness.moves(instance.id) == [
        (None, Status.PENDING),
        (Status.PENDING, Status.PROVISIONING),
        (Status.PROVISIONING, Status.INITIALIZING),
        (Status.INITIALIZING, Status.READY),
    ]
    # The chain is over: its last token is stale too.
    assert harness.pipeline.advance(instance.id, chain.token) == DONE
    return row


def test_a_tenants_first_vm_inits_exports_stores_then_sends_claude(harness):
    tenant = harness.onboarded_tenant()

    row = provision_step_by_step(harness, tenant)

    assert row.reason == "guest initialised"
    assert harness.credential_calls(row.provider_id) == ["init", "export", "claude"]
    view = harness.guest_view(row.provider_id)
    assert view["initialised"] and view["claude_configured"] and not view["imported"]
    assert view["ssh_pubkey"] == row.ssh_pubkey
    assert row.forges and all("ghp_" not in str(forge) for forge in row.forges)
    # The identity is stored, and the claim is settled.
    assert harness.bundles.get(tenant) is not None
    assert harness.bundles.pending_claim(tenant) is None


def test_a_second_vm_of_the_tenant_imports_the_bundle_then_sends_claude(harness):
    tenant = harness.onboarded_tenant()
    first = provision_step_by_step(harness, tenant)
    bundle = harness.bundles.get(tenant)

    second = provision_step_by_step(harness, tenant)

    assert second.reason == "guest imported the tenant's bundle"
    assert harness.credential_calls(second.provider_id) == ["import", "claude"]
    view = harness.guest_view(second.provider_id)
    assert view["imported"] and view["claude_configured"] and not view["initialised"]
    assert second.ssh_pubkey == first.ssh_pubkey == view["ssh_pubkey"]
    assert harness.bundles.get(tenant) == bundle  # the same identity, stored once
    assert harness.credential_calls(first.provider_id) == ["init", "export", "claude"]


def test_a_teardown_deletes_the_vm_step_by_step_and_keeps_the_identity(harness):
    tenant = harness.onboarded_tenant()
    row = provision_step_by_step(harness, tenant)
    bundle = harness.bundles.get(tenant)
    row = harness.registry.transition(
        row.id,
        Status.READY,
        Status.TEARING_DOWN,
        "teardown requested",
        teardown_mode="keep",
        wake_token=uuid.uuid4(),
    )
    chain = Chain(harness.pipeline, row.id)

    # The delete is sent, and its operation persisted; then operation polls.
    step = chain.step()
    torn = harness.registry.get(row.id)
    assert torn.status is Status.TEARING_DOWN
    assert torn.operation_id and torn.operation_id != row.operation_id
    assert step == Step(delay=OPERATION_POLL_SECS, token=torn.wake_token)
    vm = harness.compute.get_instance(row.provider_id)
    assert vm is None or vm.status == "DELETING"
    # The guest was not asked for its identity: the bundle is stored already.
    assert harness.credential_calls(row.provider_id) == ["init", "export", "claude"]

    step, torn = chain.poll(Status.TEARING_DOWN, OPERATION_POLL_SECS)

    assert torn.status is Status.RETIRED
    assert torn.reason == "VM deleted"
    assert step == DONE
    assert harness.compute.get_instance(row.provider_id) is None
    assert harness.moves(row.id)[-2:] == [
        (Status.READY, Status.TEARING_DOWN),
        (Status.TEARING_DOWN, Status.RETIRED),
    ]
    assert harness.bundles.get(tenant) == bundle  # mode=keep: the identity outlives its VMs


@pytest.fixture
def wait_history(pg_pool):
    with pg_pool.connection() as conn:
        conn.execute("DELETE FROM wait_samples")
    yield PostgresWaitHistory(pg_pool)
    with pg_pool.connection() as conn:
        conn.execute("DELETE FROM wait_samples")


def test_with_adaptive_waits_the_polls_come_when_recent_creates_and_boots_finished(
    harness, wait_history
):
    """The simulator's create takes 0.3 s and its guest boots 0.5 s after RUNNING; the history
    says so, so each wait is one sleep to the learned finish, not the fixed 1 s / 2 s."""
    for _ in range(3):
        wait_history.record(WaitKind.CREATE, uuid.uuid4(), WaitSample(0.28, 0.32))
        wait_history.record(WaitKind.BOOT, uuid.uuid4(), WaitSample(0.5, 0.55))
    pipeline = harness.pipeline_with(Waits(wait_history, adaptive=True))
    instance, _ = harness.registry.create(harness.onboarded_tenant())
    chain = Chain(pipeline, instance.id)

    # The create is sent and its operation polled at once: not done, so sleep to 0.32 s in.
    step = chain.step()
    assert harness.registry.get(instance.id).status is Status.PROVISIONING
    assert 0 < step.delay <= 0.32
    while step.delay is not None:
        time.sleep(step.delay)
        step = chain.step()
        row = harness.registry.get(instance.id)
        if row.status is Status.INITIALIZING:
            # The guest answered 503 on entry: sleep to 0.55 s into the boot, or just past it.
            assert 0 < step.delay <= 0.55

    row = harness.registry.get(instance.id)
    assert row.status is Status.READY, row.reason
    # And this VM's waits are samples for the next ones.
    create, boot = (wait_history.recent(kind)[0] for kind in (WaitKind.CREATE, WaitKind.BOOT))
    # Timed from the row's move into the status (the create call's own time counts), so later
    # than the simulator's own clock says.
    assert 0 <= create.not_done_at < create.done_at < 5.0 and create.done_at >= 0.3
    assert 0 <= boot.not_done_at < boot.done_at < 5.0 and boot.done_at > 0.25
