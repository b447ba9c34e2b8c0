"""A tenant's identity is created once (docs/ARCHITECTURE.md#invariants), and guest health errors.

The pipeline runs in-process over its real adapters: PostgresFleetRegistry and PostgresLocks on
the session database, YcCompute and HttpGuestAgent against the simulator, EnvelopeBundleStore on
OpenBao transit, HvacTenantSecrets on OpenBao KV. `Driver` plays the Celery worker: it sends each
continuation after its delay (shortened), and replays a message whose worker "died".
"""

import contextlib
import dataclasses
import secrets
import threading
import time
import uuid

import pytest

from shared.adapters.bundles import EnvelopeBundleStore, PostgresBundleRemover
from shared.adapters.capacity import PostgresOperationBudget
from shared.adapters.guest import HttpGuestAgent
from shared.adapters.locks import PostgresLocks
from shared.adapters.registry import PostgresFleetRegistry
from shared.adapters.tenants import PostgresTenantDirectory
from shared.adapters.vault_client import vault_client
from shared.adapters.vault_kv import HvacTenantSecrets
from shared.adapters.vault_transit import TransitKeys
from shared.adapters.yc import YcCompute
from shared.domain.lifecycle import Status
from shared.domain.secrets import ForgeCredential, Secret, TenantSecrets
from shared.service_layer.onboarding import Onboarding
from shared.service_layer.pipeline import Pipeline
from shared.settings import load_settings


class WorkerKilled(BaseException):
    """What a SIGKILLed worker leaves behind: the step stopped mid-way, the message unacked."""


def tenant_name(stem: str = "id") -> str:
    return f"{stem}-{secrets.token_hex(4)}"


class Harness:
    def __init__(self, simulator, openbao, pool, **env) -> None:
        self.sim = simulator
        self.settings = load_settings(
            {
                **simulator.yc_env(),
                "YC_FOLDER_ID": "ident-" + secrets.token_hex(4),
                "DARK_DEPLOYMENT": "ident-" + secrets.token_hex(3),
                "DATABASE_URL": "postgresql://unused",
                "VAULT_ADDR": openbao.addr,
                "VAULT_TOKEN": openbao.token,
                "DARK_GUEST_TIMEOUT_SECS": "3",
                **env,
            }
        )
        vault = vault_client(self.settings)
        self.pool = pool
        self.registry = PostgresFleetRegistry(pool)
        self.locks = PostgresLocks(pool)
        self.compute = YcCompute.from_settings(self.settings)
        self.guest = HttpGuestAgent.from_settings(self.settings)
        self.secrets = HvacTenantSecrets(vault, kv_mount=self.settings.vault_kv_mount)
        self.bundles = EnvelopeBundleStore(
            pool, TransitKeys(vault, key_name=self.settings.bundle_key_name)
        )

    def pipeline(self, *, guest=None, bundles=None, compute=None) -> Pipeline:
        return Pipeline(
            registry=self.registry,
            compute=compute or self.compute,
            guest=guest or self.guest,
            secrets=self.secrets,
            bundles=bundles or self.bundles,
            locks=self.locks,
            capacity=PostgresOperationBudget(self.pool, self.settings.yc_max_concurrent_operations),
            settings=self.settings,
        )

    def onboard(self, tenant: str) -> None:
        self.secrets.write(
            tenant,
            TenantSecrets(
                claude_oauth_token=Secret("sk-ant-oat01-" + secrets.token_urlsafe(32)),
                nks_pat=Secret("nks-" + secrets.token_urlsafe(16)),
                forges=(ForgeCredential("gh", "github.com", Secret("ghp_" + "x" * 24)),),
            ),
        )

    def guest_calls(self, provider_id: str) -> list[str]:
        by_vm = self.sim.admin("GET", "/guests/calls")["by_vm"]
        return [c["method"] for c in by_vm.get(provider_id, []) if c["status"] == 200]

    def guest_view(self, provider_id: str) -> dict:
        return self.sim.admin("GET", f"/guests/vms/{provider_id}")

    def fault(self, provider_id: str, mode: str, seconds: float) -> None:
        self.sim.admin(
            "POST", "/guests/faults", json={"vm_id": provider_id, "mode": mode, "seconds": seconds}
        )


class Driver:
    """Runs one instance's message chain to its end, as the worker and the broker would."""

    def __init__(self, pipeline: Pipeline, instance_id: uuid.UUID) -> None:
        self.pipeline = pipeline
        self.instance_id = instance_id
        self.token = pipeline.registry.get(instance_id).wake_token
        self.killed = 0

    def run(self, *, until=None, timeout: float = 60):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            row = self.pipeline.registry.get(self.instance_id)
            if until is not None and until(row):
                return row
            try:
                step = self.pipeline.advance(self.instance_id, self.token)
            except WorkerKilled:
                self.killed += 1  # the broker redelivers the same message
                continue
            if step.delay is None and step.transient is None:  # done
                return self.pipeline.registry.get(self.instance_id)
            if step.transient is not None:
                time.sleep(0.2)
                continue
            self.token = step.token
            time.sleep(min(step.delay, 0.2))
        raise AssertionError(f"instance {self.instance_id} did not finish within {timeout} s")


@pytest.fixture(scope="module")
def harness(simulator, openbao, pg_pool):
    return Harness(simulator, openbao, pg_pool)


# --- the identity is created once ---------------------------------------------------------------


class BlockingInit:
    """A guest agent whose `init` calls the guest, then stops until released (mid-init)."""

    def __init__(self, guest) -> None:
        self._guest = guest
        self.inside = threading.Event()
        self.release = threading.Event()

    def __getattr__(self, name):
        return getattr(self._guest, name)

    def init(self, address, secrets):
        identity = self._guest.init(address, secrets)
        self.inside.set()
        assert self.release.wait(60)
        return identity


def terminate_tenant_init_lock(pool, tenant: str) -> None:
    """Ends the Postgres session holding the tenant-init advisory lock, if one does."""
    with pool.connection() as conn:
        conn.execute(
            "SELECT pg_terminate_backend(l.pid) FROM pg_locks l"
            " WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1"
            " AND ((l.classid::bigint << 32) | l.objid::bigint)"
            " = (hashtextextended(%s, 0) & x'ffffffffffffffff'::bigint)",
            (f"tenant-init:{tenant}",),
        )


def test_first_provisions_racing_after_the_init_lock_vanished_init_once(harness):
    tenant = tenant_name("race")
    harness.onboard(tenant)
    first, _ = harness.registry.create(tenant)
    second, _ = harness.registry.create(tenant)
    blocking = BlockingInit(harness.guest)
    first_driver = Driver(harness.pipeline(guest=blocking), first.id)
    results: dict = {}
    thread = threading.Thread(target=lambda: results.setdefault("first", first_driver.run()))
    thread.start()
    try:
        assert blocking.inside.wait(60), "the first provision never reached init"
        terminate_tenant_init_lock(harness.pool, tenant)
        # While the first is inside init, the second gets as far as it can without it.
        second_driver = Driver(harness.pipeline(), second.id)
        with contextlib.suppress(AssertionError):  # not finished: it waits for the first
            second_driver.run(until=lambda row: row.status is Status.READY, timeout=5)
    finally:
        blocking.release.set()
        thread.join(60)
    assert results["first"].status is Status.READY, results["first"].reason
    second_row = Driver(harness.pipeline(), second.id).run()
    assert second_row.status is Status.READY, second_row.reason

    first_row = harness.registry.get(first.id)
    inits = [harness.guest_calls(r.provider_id).count("init") for r in (first_row, second_row)]
    assert inits == [1, 0]
    assert first_row.ssh_pubkey == second_row.ssh_pubkey
    assert harness.guest_view(second_row.provider_id)["ssh_pubkey"] == first_row.ssh_pubkey


class PutKilledOnce:
    """A bundle store whose first `put` dies before it writes, as a SIGKILLed worker would."""

    def __init__(self, bundles) -> None:
        self._bundles = bundles
        self.killed = False

    def __getattr__(self, name):
        return getattr(self._bundles, name)

    def put(self, tenant, bundle, owner):
        if not self.killed:
            self.killed = True
            raise WorkerKilled()
        return self._bundles.put(tenant, bundle, owner)


def test_a_worker_killed_after_init_before_the_bundle_was_stored_does_not_init_again(harness):
    tenant = tenant_name("crash")
    harness.onboard(tenant)
    instance, _ = harness.registry.create(tenant)
    driver = Driver(harness.pipeline(bundles=PutKilledOnce(harness.bundles)), instance.id)
    row = driver.run()

    assert driver.killed == 1
    assert row.status is Status.READY, row.reason
    calls = harness.guest_calls(row.provider_id)
    assert calls.count("init") == 1, calls
    stored = harness.bundles.get(tenant)
    assert stored is not None
    assert harness.guest_view(row.provider_id)["ssh_pubkey"] == row.ssh_pubkey
    # The stored bundle is the guest's identity: a second VM imports the same key.
    other, _ = harness.registry.create(tenant)
    other_row = Driver(harness.pipeline(), other.id).run()
    assert other_row.status is Status.READY, other_row.reason
    assert other_row.ssh_pubkey == row.ssh_pubkey
    assert "init" not in harness.guest_calls(other_row.provider_id)


# --- guest health answers that are not health -----------------------------------------------------


class FaultAtFirstHealth:
    """A guest agent that injects a simulator fault into the VM's guest just before the first
    health check, so that every check of the initializing step meets it."""

    def __init__(self, harness, instance_id, mode: str, seconds: float) -> None:
        self._harness = harness
        self._instance_id = instance_id
        self._fault = (mode, seconds)
        self.injected = False

    def __getattr__(self, name):
        return getattr(self._harness.guest, name)

    def health(self, address, **kwargs):
        if not self.injected:
            self.injected = True
            provider_id = self._harness.registry.get(self._instance_id).provider_id
            self._harness.fault(provider_id, *self._fault)
        return self._harness.guest.health(address, **kwargs)


def run_with_health_fault(harness, mode: str, seconds: float):
    tenant = tenant_name(mode)
    harness.onboard(tenant)
    instance, _ = harness.registry.create(tenant)
    guest = FaultAtFirstHealth(harness, instance.id, mode, seconds)
    row = Driver(harness.pipeline(guest=guest), instance.id).run()
    assert guest.injected
    return row


@pytest.mark.parametrize("mode", ["error500", "garbage", "oversize"])
def test_a_guest_answering_health_badly_for_a_while_still_ends_ready(harness, mode):
    row = run_with_health_fault(harness, mode, 3)
    assert row.status is Status.READY, row.reason
    assert harness.guest_calls(row.provider_id).count("init") == 1


def test_a_guest_answering_health_badly_past_the_boot_timeout_fails_with_a_reason(
    simulator, openbao, pg_pool
):
    harness = Harness(simulator, openbao, pg_pool, DARK_GUEST_BOOT_TIMEOUT="3")
    row = run_with_health_fault(harness, "error500", 60)
    assert row.status is Status.FAILED
    assert "within 3 s" in row.reason and "HTTP 500" in row.reason, row.reason
    assert "init" not in harness.guest_calls(row.provider_id)


class PutNeverReturns:
    """A bundle store whose `put` always dies: the worker is killed and nothing redelivers."""

    def __init__(self, bundles) -> None:
        self._bundles = bundles
        self.killed = False

    def __getattr__(self, name):
        return getattr(self._bundles, name)

    def put(self, tenant, bundle, owner):
        self.killed = True
        raise WorkerKilled()


def request_teardown(registry, instance_id, mode: str = "keep"):
    row = registry.get(instance_id)
    return registry.transition(
        row.id,
        row.status,
        Status.TEARING_DOWN,
        "teardown requested",
        teardown_mode=mode,
        wake_token=uuid.uuid4(),
    )


def test_a_teardown_mid_init_keeps_the_identity_the_guest_holds(harness):
    tenant = tenant_name("midinit")
    harness.onboard(tenant)
    first, _ = harness.registry.create(tenant)
    dying = PutNeverReturns(harness.bundles)
    row = Driver(harness.pipeline(bundles=dying), first.id).run(until=lambda _: dying.killed)
    assert row.status is Status.INITIALIZING and harness.bundles.get(tenant) is None
    made = harness.guest_view(row.provider_id)["ssh_pubkey"]

    request_teardown(harness.registry, first.id)
    retired = Driver(harness.pipeline(), first.id).run()
    assert retired.status is Status.RETIRED, retired.reason

    second, _ = harness.registry.create(tenant)
    second_row = Driver(harness.pipeline(), second.id).run()
    assert second_row.status is Status.READY, second_row.reason
    assert "init" not in harness.guest_calls(second_row.provider_id)
    assert second_row.ssh_pubkey == made


def test_a_tenant_offboarded_then_onboarded_again_gets_a_new_identity(harness):
    tenant = tenant_name("reuse")
    harness.onboard(tenant)
    old, _ = harness.registry.create(tenant)
    old_row = Driver(harness.pipeline(), old.id).run()
    assert old_row.status is Status.READY, old_row.reason
    request_teardown(harness.registry, old.id)
    assert Driver(harness.pipeline(), old.id).run().status is Status.RETIRED

    onboarding = Onboarding(
        harness.secrets,
        PostgresTenantDirectory(harness.pool),
        harness.registry,
        PostgresBundleRemover(harness.pool),
        harness.locks,
    )
    onboarding.offboard(tenant)
    assert harness.bundles.get(tenant) is None
    harness.onboard(tenant)

    new, _ = harness.registry.create(tenant)
    new_row = Driver(harness.pipeline(), new.id).run()
    assert new_row.status is Status.READY, new_row.reason
    assert harness.guest_calls(new_row.provider_id).count("init") == 1
    assert new_row.ssh_pubkey != old_row.ssh_pubkey


def test_a_claim_whose_owner_failed_before_storing_anything_is_taken_over(harness):
    tenant = tenant_name("takeover")
    harness.onboard(tenant)
    gone, _ = harness.registry.create(tenant)
    assert harness.bundles.claim(tenant, gone.id) == (gone.id, True)
    harness.registry.transition(gone.id, Status.PENDING, Status.FAILED, "test: failed mid-init")

    instance, _ = harness.registry.create(tenant)
    row = Driver(harness.pipeline(), instance.id).run()
    assert row.status is Status.READY, row.reason
    assert harness.guest_calls(row.provider_id).count("init") == 1
    assert harness.bundles.claim(tenant, gone.id) == (instance.id, False)
    assert harness.bundles.get(tenant) is not None


# --- offboarding while the identity is being created ---------------------------------------------


class OffboardedDuringExport:
    """A guest agent whose `export` answers, and then, before the caller can store what it got,
    offboarding removes the tenant's bundle and claim."""

    def __init__(self, harness, tenant: str) -> None:
        self._guest = harness.guest
        self._remover = PostgresBundleRemover(harness.pool)
        self._tenant = tenant
        self.exports = 0

    def __getattr__(self, name):
        return getattr(self._guest, name)

    def export(self, address):
        bundle = self._guest.export(address)
        self.exports += 1
        self._remover.delete(self._tenant)
        return bundle


def test_an_identity_created_while_the_tenant_was_offboarded_is_not_stored(harness):
    tenant = tenant_name("offinit")
    harness.onboard(tenant)
    instance, _ = harness.registry.create(tenant)
    guest = OffboardedDuringExport(harness, tenant)
    row = Driver(harness.pipeline(guest=guest), instance.id).run()

    assert guest.exports == 1
    assert harness.bundles.get(tenant) is None
    assert row.status is Status.FAILED
    assert row.reason == "the tenant was offboarded while its identity was being created"


def test_a_teardown_salvage_racing_offboarding_does_not_store_the_old_identity(harness):
    tenant = tenant_name("offsalv")
    harness.onboard(tenant)
    instance, _ = harness.registry.create(tenant)
    dying = PutNeverReturns(harness.bundles)
    Driver(harness.pipeline(bundles=dying), instance.id).run(until=lambda _: dying.killed)

    request_teardown(harness.registry, instance.id)
    guest = OffboardedDuringExport(harness, tenant)
    retired = Driver(harness.pipeline(guest=guest), instance.id).run()
    assert retired.status is Status.RETIRED, retired.reason
    assert guest.exports == 1
    assert harness.bundles.get(tenant) is None


# --- secrets go only to the VM at the address it was given (docs/ARCHITECTURE.md#pipeline) --------

SECRET_BEARING = ("init", "claude", "import")


class VmChangedBehindOurBack:
    """The simulator's compute, except that once the instance has left provisioning its VM reads
    back changed (another public address, or a status): what the cloud would say after someone
    stopped or re-addressed it. The guest at the old address still answers."""

    def __init__(self, harness, instance_id, **change) -> None:
        self._compute = harness.compute
        self._registry = harness.registry
        self._instance_id = instance_id
        self._change = change

    def __getattr__(self, name):
        return getattr(self._compute, name)

    def get_instance(self, provider_id):
        vm = self._compute.get_instance(provider_id)
        if vm is None or self._registry.get(self._instance_id).status is Status.PROVISIONING:
            return vm
        return dataclasses.replace(vm, **self._change)


def test_no_credentials_reach_a_guest_whose_vm_changed_address(harness):
    tenant = tenant_name("moved")
    harness.onboard(tenant)
    instance, _ = harness.registry.create(tenant)
    compute = VmChangedBehindOurBack(harness, instance.id, address="203.0.113.7")
    row = Driver(harness.pipeline(compute=compute), instance.id).run()

    assert row.status is Status.FAILED
    assert "203.0.113.7" in row.reason and row.address in row.reason, row.reason
    calls = harness.guest_calls(row.provider_id)
    assert not set(SECRET_BEARING) & set(calls), calls


def test_no_credentials_reach_a_guest_whose_vm_was_stopped(simulator, openbao, pg_pool):
    harness = Harness(simulator, openbao, pg_pool, DARK_GUEST_BOOT_TIMEOUT="3")
    tenant = tenant_name("stopped")
    harness.onboard(tenant)
    instance, _ = harness.registry.create(tenant)
    compute = VmChangedBehindOurBack(harness, instance.id, status="STOPPED")
    row = Driver(harness.pipeline(compute=compute), instance.id).run()

    assert row.status is Status.FAILED
    assert "STOPPED" in row.reason and "within 3 s" in row.reason, row.reason
    calls = harness.guest_calls(row.provider_id)
    assert not set(SECRET_BEARING) & set(calls), calls


def test_a_teardown_does_not_ask_a_re_addressed_vm_for_the_identity(harness):
    tenant = tenant_name("movedtd")
    harness.onboard(tenant)
    instance, _ = harness.registry.create(tenant)
    dying = PutNeverReturns(harness.bundles)
    row = Driver(harness.pipeline(bundles=dying), instance.id).run(until=lambda _: dying.killed)
    exports = harness.guest_calls(row.provider_id).count("export")

    request_teardown(harness.registry, instance.id)
    compute = VmChangedBehindOurBack(harness, instance.id, address="203.0.113.8")
    retired = Driver(harness.pipeline(compute=compute), instance.id).run()
    assert retired.status is Status.RETIRED, retired.reason
    assert harness.guest_calls(row.provider_id).count("export") == exports
    assert harness.bundles.get(tenant) is None


# --- the simulated cloud re-addresses the VM itself (its admin API), in both guest networks -------

IDENTITY_BEARING = (*SECRET_BEARING, "export")


class Readdress:
    """Moves the instance's VM to a fresh address on the guest network, through the simulator's
    admin API, and gives its old address to a stranger VM that runs a guest of its own: whatever
    was meant for the old address would reach the stranger."""

    def __init__(self, harness, instance_id) -> None:
        self.harness = harness
        self.instance_id = instance_id
        self.network = harness.settings.guest_network
        self.field = "address" if self.network == "public" else "internal_address"
        self.moved: tuple[str, str] | None = None
        self.stranger: str | None = None

    def __call__(self) -> None:
        if self.moved:
            return
        sim, row = self.harness.sim, self.harness.registry.get(self.instance_id)
        body = {"network": self.network}
        new = sim.admin("POST", f"/cloud/vms/{row.provider_id}/address", json=body)[self.field]
        stranger = sim.admin(
            "POST",
            "/cloud/vms",
            json={"folder_id": self.harness.settings.yc_folder_id, "name": f"x-{uuid.uuid4()}"},
        )
        sim.admin(
            "POST",
            f"/cloud/vms/{stranger['id']}/address",
            json={**body, "address": row.address},
        )
        self.moved, self.stranger = (row.address, new), stranger["id"]

    def calls_to_either(self, provider_id: str) -> list[dict]:
        """Every successful-or-not guest call the moved VM or the stranger received."""
        by_vm = self.harness.sim.admin("GET", "/guests/calls")["by_vm"]
        return by_vm.get(provider_id, []) + by_vm.get(self.stranger, [])


class MoveAfter:
    """The real guest agent, except that the VM is re-addressed right after `method` returns."""

    def __init__(self, guest, method: str, move: Readdress) -> None:
        self._guest = guest
        self._method = method
        self._move = move

    def __getattr__(self, name):
        call = getattr(self._guest, name)
        if name != self._method:
            return call

        def then_move(*args, **kwargs):
            result = call(*args, **kwargs)
            self._move()
            return result

        return then_move


@pytest.fixture(params=["public", "internal"])
def net_harness(request, simulator, openbao, pg_pool):
    harness = Harness(simulator, openbao, pg_pool, DARK_GUEST_NETWORK=request.param)
    yield harness
    simulator.admin("DELETE", "/cloud/vms", params={"folder_id": harness.settings.yc_folder_id})


def assert_failed_for_the_move(row, move: Readdress) -> None:
    old, new = move.moved
    assert row.status is Status.FAILED, row.reason
    assert row.reason == f"the VM's address changed from {old} to {new}; sent it nothing"


@pytest.mark.parametrize("first_vm", [True, False], ids=["init", "import"])
def test_a_vm_readdressed_between_running_and_the_hand_over_gets_no_secret(net_harness, first_vm):
    harness = net_harness
    tenant = tenant_name("readdr")
    harness.onboard(tenant)
    if not first_vm:  # the tenant has an identity: the second VM would import it
        earlier, _ = harness.registry.create(tenant)
        assert Driver(harness.pipeline(), earlier.id).run().status is Status.READY
    instance, _ = harness.registry.create(tenant)
    move = Readdress(harness, instance.id)
    row = Driver(
        harness.pipeline(guest=MoveAfter(harness.guest, "health", move)), instance.id
    ).run()

    assert_failed_for_the_move(row, move)
    assert row.address == move.moved[0]
    sent = [c for c in move.calls_to_either(row.provider_id) if c["method"] in IDENTITY_BEARING]
    assert sent == []


def test_a_vm_readdressed_after_init_gets_no_claude_token_and_gives_no_bundle(net_harness):
    harness = net_harness
    tenant = tenant_name("readdr2")
    harness.onboard(tenant)
    instance, _ = harness.registry.create(tenant)
    move = Readdress(harness, instance.id)
    row = Driver(harness.pipeline(guest=MoveAfter(harness.guest, "init", move)), instance.id).run()

    assert_failed_for_the_move(row, move)
    calls = move.calls_to_either(row.provider_id)
    assert [(c["method"], c["address"]) for c in calls if c["method"] in IDENTITY_BEARING] == [
        ("init", move.moved[0])
    ]
    # Nothing taken from an unchecked address: the claim is released, no bundle stored.
    assert harness.bundles.get(tenant) is None
    assert harness.bundles.pending_claim(tenant) is None


def test_a_teardown_asks_a_vm_readdressed_mid_init_for_nothing(net_harness):
    harness = net_harness
    tenant = tenant_name("readdr3")
    harness.onboard(tenant)
    instance, _ = harness.registry.create(tenant)
    dying = PutNeverReturns(harness.bundles)
    row = Driver(harness.pipeline(bundles=dying), instance.id).run(until=lambda _: dying.killed)
    move = Readdress(harness, instance.id)
    move()
    exports_before = [c for c in move.calls_to_either(row.provider_id) if c["method"] == "export"]

    request_teardown(harness.registry, instance.id)
    retired = Driver(harness.pipeline(), instance.id).run()
    assert retired.status is Status.RETIRED, retired.reason
    exports = [c for c in move.calls_to_either(row.provider_id) if c["method"] == "export"]
    assert exports == exports_before
    assert harness.bundles.get(tenant) is None
