"""reconcile_once against its real peers: the YC simulator through YcCompute (gRPC/TLS, the real
SDK) and the Postgres registry, run records and locks.

Reconcile acts on every row of its registry, so this module has a database of its own; each test
has a folder and a deployment of its own in the simulator. Time moves by passing a later `now`.
"""

import itertools
import secrets
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from shared.adapters.db import make_pool
from shared.adapters.locks import PostgresLocks
from shared.adapters.registry import PostgresFleetRegistry
from shared.adapters.runs import PostgresReconcileRuns
from shared.adapters.tenants import PostgresTenantDirectory
from shared.adapters.yc import YcCompute
from shared.domain.errors import InstanceNotFound
from shared.domain.lifecycle import Status
from shared.service_layer.fleet import FleetService
from shared.service_layer.reconcile import LOST_REASON, STALL_SECS, reconcile_once
from shared.settings import load_settings
from tests.conftest import PG_ADMIN_DSN
from tests.fakes import FakeDispatcher
from tests.support.processes import wait_until
from tests.support.stack import private_database

GRACE, STUCK = 60, 300


@pytest.fixture(scope="module")
def pool():
    with private_database(PG_ADMIN_DSN) as url:
        pool = make_pool(url, max_size=6)
        yield pool
        pool.close()


class Harness:
    def __init__(self, simulator, pool, **env) -> None:
        self.sim = simulator
        self.folder = "rec-" + secrets.token_hex(4)
        self.deployment = "rec-" + secrets.token_hex(3)
        self.settings = load_settings(
            {
                **simulator.yc_env(),
                "YC_FOLDER_ID": self.folder,
                "DARK_DEPLOYMENT": self.deployment,
                "RECONCILE_ORPHAN_GRACE_SECS": str(GRACE),
                "RECONCILE_STUCK_SECS": str(STUCK),
                **env,
            }
        )
        self.compute = YcCompute.from_settings(self.settings)
        self.registry = PostgresFleetRegistry(pool)
        self.runs = PostgresReconcileRuns(pool)
        self.locks = PostgresLocks(pool)
        self.dispatch = FakeDispatcher()  # the e2e tests send through Redis
        self.directory = PostgresTenantDirectory(pool)
        self.tenants: list[str] = []

    @property
    def labels(self) -> dict:
        return {"managed-by": "dark-orchestrator", "deployment": self.deployment}

    def reconcile(self, *, later: float = 0, dry_run: bool = False, **options):
        """`options`: reconcile_once's keyword options (confirm_destructive)."""
        return reconcile_once(
            self.registry,
            self.compute,
            self.runs,
            self.locks,
            self.settings,
            now=datetime.now(UTC) + timedelta(seconds=later),
            dry_run=dry_run,
            trigger="test",
            fleet=FleetService(
                self.registry,
                self.dispatch,
                max_instances_per_tenant=self.settings.max_instances_per_tenant,
                tenants=self.directory,
            ),
            **options,
        )

    def add_vm(self, name=None, *, age=0, labels=None, folder=None) -> dict:
        return self.sim.admin(
            "POST",
            "/cloud/vms",
            json={
                "folder_id": folder or self.folder,
                "name": name or "vm-" + secrets.token_hex(4),
                "labels": self.labels if labels is None else labels,
                "age_secs": age,
                "guest": False,
            },
        )

    def vms(self, folder=None) -> dict[str, dict]:
        return {
            vm["id"]: vm
            for vm in self.sim.admin("GET", f"/cloud/vms?folder_id={folder or self.folder}")
        }

    def assert_going(self, vm_id: str) -> None:
        """Deleted, or being deleted (the simulated delete takes a moment)."""
        vm = self.vms().get(vm_id)
        assert vm is None or vm["status"] == "DELETING", vm

    def new_row(self):
        self.tenants.append("rec-" + secrets.token_hex(4))
        inst, _ = self.registry.create(self.tenants[-1])
        return inst

    def row(self, *path: Status):
        """A row moved along `path` from pending."""
        inst = self.new_row()
        for status in path:
            inst = self.registry.transition(inst.id, inst.status, status, f"test: {status}")
        return inst

    def owned_row(self, *path: Status, age: float = 0):
        """A row moved along `path` and its VM, named and recorded as the pipeline does."""
        inst = self.new_row()
        vm = self.add_vm(inst.vm_name, age=age)
        for status in path:
            inst = self.registry.transition(inst.id, inst.status, status, f"test: {status}")
            if status is Status.PROVISIONING:
                inst = self.registry.update(inst.id, inst.status, provider_id=vm["id"])
        return inst, vm

    def events(self, inst) -> list[tuple]:
        return [(e.from_status, e.to_status, e.reason) for e in self.registry.events(inst.id)]


@pytest.fixture
def harness(simulator, pool):
    """Makes harnesses (settings from env overrides). Afterwards removes their rows (reconcile
    would act on them in the next test) and their folders' VMs."""
    made: list[Harness] = []

    def make(**env) -> Harness:
        made.append(Harness(simulator, pool, **env))
        return made[-1]

    yield make
    for h in made:
        simulator.admin("DELETE", f"/cloud/vms?folder_id={h.folder}")
        with pool.connection() as conn:
            conn.execute("DELETE FROM instances WHERE tenant = ANY(%s)", (h.tenants,))
            conn.execute("DELETE FROM tenants WHERE name = ANY(%s)", (h.tenants,))


@pytest.fixture
def h(harness) -> Harness:
    return harness()


PROVISIONED = (Status.PROVISIONING, Status.INITIALIZING, Status.READY)


def test_an_orphan_is_deleted_once_older_than_the_grace_period_and_not_before(h):
    old = h.add_vm(age=GRACE + 30)
    young = h.add_vm(age=GRACE - 30)
    summary = h.reconcile()
    h.assert_going(old["id"])
    assert h.vms()[young["id"]]["status"] == "RUNNING"
    assert [(a["kind"], a["vm_id"], a["vm_name"]) for a in summary.actions] == [
        ("orphan", old["id"], old["name"])
    ]
    assert summary.counts["orphan"] == 1 and summary.errors == []

    wait_until(lambda: old["id"] not in h.vms(), 10, what="orphan deleted")
    log = h.sim.admin("GET", "/cloud/log")
    by = [(e["event"], e["by"]) for e in log if e["vm_id"] == old["id"]]
    assert by == [("created", "admin"), ("deleted", "api")]

    h.reconcile(later=31)  # now the young one is past the grace period too
    h.assert_going(young["id"])


def test_vms_of_another_deployment_or_without_our_labels_are_never_touched(h):
    ancient = 100 * GRACE
    others = [
        h.add_vm(age=ancient, labels={"managed-by": "dark-orchestrator", "deployment": "other"}),
        h.add_vm(age=ancient, labels={}),
        h.add_vm(age=ancient, labels={"deployment": h.deployment}),
        h.add_vm(age=ancient, labels={"managed-by": "someone", "deployment": h.deployment}),
    ]
    # Even one named after a failed row of ours.
    failed = h.row(Status.FAILED)
    others.append(h.add_vm(failed.vm_name, age=ancient, labels={"team": "x"}))
    before = h.vms()
    summary = h.reconcile(later=10 * STUCK)
    assert h.vms() == before
    assert summary.actions == [] and summary.counts["vms_listed"] == 0
    log = h.sim.admin("GET", "/cloud/log")
    ids = {vm["id"] for vm in others}
    assert not [e for e in log if e["event"] == "deleted" and e["vm_id"] in ids]


def test_a_stuck_row_fails_with_the_reason_and_its_vm_goes(h):
    inst, vm = h.owned_row(Status.PROVISIONING, Status.INITIALIZING)
    summary = h.reconcile(later=STUCK + 5)
    row = h.registry.get(inst.id)
    assert row.status is Status.FAILED
    assert row.reason.startswith("stuck in initializing for 30") and row.reason.endswith(" s")
    h.assert_going(vm["id"])
    (action,) = summary.actions
    assert (action["kind"], action["instance_id"], action["vm_id"]) == (
        "stuck",
        str(inst.id),
        vm["id"],
    )
    assert h.events(inst)[-2:] == [
        (Status.INITIALIZING, Status.FAILED, row.reason),
        (Status.FAILED, Status.FAILED, f"reconcile: deleting VM {vm['id']}"),
    ]


def test_a_stuck_row_is_not_failed_before_the_timeout_only_resumed(h):
    inst, vm = h.owned_row(Status.PROVISIONING)
    # Idle long enough that its chain of messages is presumed lost: resumed, never failed.
    assert [a["kind"] for a in h.reconcile(later=STUCK - 5).actions] == ["resume"]
    assert h.registry.get(inst.id).status is Status.PROVISIONING
    assert h.vms()[vm["id"]]["status"] == "RUNNING"


def test_the_vm_of_a_failed_row_is_cleaned_up_with_an_event(h):
    inst, vm = h.owned_row(Status.PROVISIONING, Status.FAILED, age=5)
    summary = h.reconcile()
    h.assert_going(vm["id"])
    assert [a["kind"] for a in summary.actions] == ["leftover_vm"]
    deleting = f"reconcile: deleting VM {vm['id']}"
    assert h.events(inst)[-1] == (Status.FAILED, Status.FAILED, deleting)
    assert h.registry.get(inst.id).status is Status.FAILED


def test_a_ready_row_whose_vm_vanished_becomes_lost(h):
    inst, vm = h.owned_row(*PROVISIONED)
    h.sim.admin("DELETE", f"/cloud/vms/{vm['id']}")
    summary = h.reconcile()
    row = h.registry.get(inst.id)
    assert (row.status, row.reason) == (Status.LOST, LOST_REASON)
    assert h.events(inst)[-1] == (Status.READY, Status.LOST, LOST_REASON)
    assert [a["kind"] for a in summary.actions] == ["lost"]
    assert h.dispatch.sent == []


def test_with_respawn_a_lost_row_gets_a_fresh_instance_for_its_tenant(harness):
    h = harness(RECONCILE_RESPAWN_LOST="true")
    inst, vm = h.owned_row(*PROVISIONED)
    h.directory.record_onboarded(inst.tenant, 1)
    h.sim.admin("DELETE", f"/cloud/vms/{vm['id']}")
    summary = h.reconcile()
    fresh_id, _, token = h.dispatch.sent[0]
    fresh = h.registry.get(fresh_id)
    assert (fresh.tenant, fresh.status, fresh.wake_token) == (inst.tenant, Status.PENDING, token)
    assert [(a["kind"], a["result"]) for a in summary.actions] == [
        ("lost", "marked lost"),
        ("respawn", f"provisioned instance {fresh.id}"),
    ]
    assert h.events(inst)[-1][2] == f"reconcile provisioned instance {fresh.id} to replace it"
    # The lost row is no longer ready: the next run leaves it (and its replacement) alone.
    assert h.reconcile().actions == [] and len(h.dispatch.sent) == 1


def test_no_respawn_for_a_tenant_that_is_not_onboarded(harness):
    h = harness(RECONCILE_RESPAWN_LOST="true")
    inst, vm = h.owned_row(*PROVISIONED)
    h.sim.admin("DELETE", f"/cloud/vms/{vm['id']}")
    summary = h.reconcile()
    assert [a["result"] for a in summary.actions] == ["marked lost", "error"]
    assert "not onboarded" in summary.errors[0]["error"]
    assert h.registry.list(tenant=inst.tenant)[0] == [h.registry.get(inst.id)]
    assert h.dispatch.sent == []


def test_an_interrupted_teardown_is_resumed_with_a_fresh_token(h):
    inst, _vm = h.owned_row(*PROVISIONED, Status.TEARING_DOWN)
    assert h.reconcile(later=STALL_SECS - 5).actions == []
    summary = h.reconcile(later=STALL_SECS + 5)
    row = h.registry.get(inst.id)
    assert row.status is Status.TEARING_DOWN and row.wake_token != inst.wake_token
    assert h.dispatch.sent == [(inst.id, Status.TEARING_DOWN, row.wake_token)]
    assert [(a["kind"], a["result"]) for a in summary.actions] == [
        ("resume_teardown", "teardown resumed")
    ]
    assert h.events(inst)[-1][2].startswith("reconcile resumed the teardown (no progress for")


def test_a_dry_run_changes_nothing_and_reports_what_the_next_real_run_does(harness):
    h = harness(RECONCILE_RESPAWN_LOST="true")
    orphan = h.add_vm(age=GRACE + 600)
    stuck, _ = h.owned_row(Status.PROVISIONING)
    failed, _ = h.owned_row(Status.PROVISIONING, Status.FAILED)
    lost, lost_vm = h.owned_row(*PROVISIONED)
    h.directory.record_onboarded(lost.tenant, 1)
    h.sim.admin("DELETE", f"/cloud/vms/{lost_vm['id']}")
    rows = [stuck, failed, lost]
    vms_before = h.vms()
    rows_before = [h.registry.get(r.id) for r in rows]
    events_before = [h.events(r) for r in rows]

    dry = h.reconcile(later=STUCK + 5, dry_run=True)
    assert h.vms() == vms_before
    assert [h.registry.get(r.id) for r in rows] == rows_before
    assert [h.events(r) for r in rows] == events_before
    assert h.dispatch.sent == []

    real = h.reconcile(later=STUCK + 5)

    def essence(summary):
        return [(a["kind"], a["instance_id"], a["vm_id"]) for a in summary.actions]

    assert essence(real) == essence(dry)
    assert real.counts == dry.counts
    kinds = sorted(a[0] for a in essence(dry))
    assert kinds == ["leftover_vm", "lost", "orphan", "respawn", "stuck"]
    assert orphan["id"] in {a[2] for a in essence(dry)}
    stored = {run["id"]: run for run in h.runs.latest(5)}
    assert stored[dry.run_id]["dry_run"] is True and stored[real.run_id]["dry_run"] is False
    assert stored[dry.run_id]["actions"] == dry.actions


def test_a_run_is_stored_with_its_times_counts_actions_and_errors(h):
    orphan = h.add_vm(age=GRACE + 1)
    summary = h.reconcile()
    run = h.runs.latest(1)[0]
    assert run["id"] == summary.run_id and run["trigger"] == "test"
    assert run["started_at"] <= run["finished_at"] <= datetime.now(UTC)
    assert run["counts"]["orphan"] == 1 and run["counts"]["vms_listed"] == 1
    assert run["actions"][0]["vm_id"] == orphan["id"] and run["errors"] == []


def test_a_cloud_error_on_one_delete_is_recorded_and_the_others_go_on(h):
    first, second = h.add_vm(age=GRACE + 1), h.add_vm(age=GRACE + 1)
    h.sim.admin(
        "POST",
        "/cloud/faults",
        json={"method": "Delete", "code": "PERMISSION_DENIED", "where": "rpc", "count": 1},
    )
    try:
        summary = h.reconcile()
    finally:
        h.sim.admin("DELETE", "/cloud/faults")
    assert len(summary.errors) == 1 and "permission denied" in summary.errors[0]["error"]
    assert [a["result"] for a in summary.actions].count("error") == 1
    going = [vm for vm in (first, second) if h.vms().get(vm["id"], {}).get("status") != "RUNNING"]
    assert len(going) == 1


def test_while_another_run_holds_the_lock_a_run_does_nothing_and_records_nothing(h):
    h.add_vm(age=GRACE + 1)
    latest = h.runs.latest(1)
    with h.locks.hold("reconcile") as taken:
        assert taken
        assert h.reconcile() is None
    assert h.runs.latest(1) == latest
    assert [vm["status"] for vm in h.vms().values()] == ["RUNNING"]


def test_latest_runs_come_newest_first_and_never_overlap(h):
    ids = [h.reconcile().run_id for _ in range(3)]
    runs = h.runs.latest(3)
    assert [r["id"] for r in runs] == ids[::-1]
    for newer, older in itertools.pairwise(runs):
        assert older["finished_at"] <= newer["started_at"]
    with pytest.raises(ValueError):
        h.runs.latest(0)


def test_a_note_on_an_unknown_instance_is_refused(h):
    with pytest.raises(InstanceNotFound):
        h.registry.note(uuid.uuid4(), "nothing here")
