"""Reconcile's decisions and its run loop over in-memory fakes of the ports
(docs/ARCHITECTURE.md#reconcile)."""

import dataclasses
import gc
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from shared.domain.lifecycle import IN_FLIGHT, Status
from shared.domain.records import CloudVm, Instance, VmStatus, vm_name_for
from shared.service_layer.fleet import FleetService
from shared.service_layer.reconcile import (
    LOST_REASON,
    STALL_SECS,
    ActionKind,
    decide,
    reconcile_once,
)
from shared.settings import Settings
from tests.fakes import (
    FakeClaims,
    FakeCompute,
    FakeDispatcher,
    FakeLocks,
    FakeRegistry,
    FakeRuns,
    FakeTenants,
    queue_down,
)

NOW = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
DEPLOYMENT = "prod-eu"
OURS = {"managed-by": "dark-orchestrator", "deployment": DEPLOYMENT}
GRACE, STUCK_SECS = 600, 1800


def settings(**overrides) -> Settings:
    return Settings(
        deployment=DEPLOYMENT,
        reconcile_orphan_grace=GRACE,
        reconcile_stuck=STUCK_SECS,
        **overrides,
    )


def ago(seconds: float) -> datetime:
    return NOW - timedelta(seconds=seconds)


def make_vm(
    name=None, *, age=3600.0, labels=OURS, status=VmStatus.RUNNING, created=True
) -> CloudVm:
    return CloudVm(
        provider_id="fhm" + uuid.uuid4().hex[:17],
        name=name or f"vm-{uuid.uuid4().hex[:8]}",
        status=status,
        labels=dict(labels),
        address="127.10.0.9",
        created_at=ago(age) if created else None,
    )


def make_row(status, *, vm=None, in_status=60.0, idle=None, tenant="acme") -> Instance:
    instance_id = uuid.uuid4()
    return Instance(
        id=instance_id,
        tenant=tenant,
        status=Status(status),
        vm_name=vm.name if vm else vm_name_for(instance_id),
        idempotency_key=uuid.uuid4(),
        created_at=ago(in_status + 100),
        updated_at=ago(in_status if idle is None else idle),
        status_changed_at=ago(in_status),
        provider_id=vm.provider_id if vm else None,
        wake_token=uuid.uuid4(),
    )


def kinds(actions) -> list[tuple]:
    return [(a.kind, a.instance.id if a.instance else None, a.vm) for a in actions]


# --- orphans --------------------------------------------------------------------------------------


def test_orphan_is_deleted_only_once_older_than_the_grace_period():
    old = make_vm(age=GRACE + 0.001)
    at_grace = make_vm(age=GRACE)
    young = make_vm(age=5)
    assert kinds(decide([old, at_grace, young], [], settings(), NOW)) == [
        (ActionKind.ORPHAN, None, old)
    ]


@pytest.mark.parametrize(
    "labels",
    [
        {},
        {"managed-by": "dark-orchestrator"},
        {"managed-by": "dark-orchestrator", "deployment": "staging"},
        {"deployment": DEPLOYMENT},
        {"managed-by": "someone-else", "deployment": DEPLOYMENT},
    ],
)
def test_a_vm_without_both_of_our_labels_is_never_touched(labels):
    foreign = make_vm(age=10 * GRACE, labels=labels)
    # Even when a failed or stuck row of ours carries its name.
    failed = make_row("failed", vm=foreign)
    stuck = make_row("provisioning", vm=make_vm(labels=labels), in_status=10 * STUCK_SECS)
    actions = decide([foreign], [failed, stuck], settings(), NOW)
    assert all(a.vm is None for a in actions)
    assert kinds(actions) == [(ActionKind.STUCK, stuck.id, None)]


def test_a_vm_with_a_row_by_provider_id_or_by_name_is_not_an_orphan():
    by_id, by_name = make_vm(), make_vm()
    row_by_id = make_row("ready", vm=by_id)
    row_by_name = dataclasses.replace(make_row("provisioning", vm=by_name), provider_id=None)
    assert decide([by_id, by_name], [row_by_id, row_by_name], settings(), NOW) == []


def test_an_orphan_already_deleting_or_of_unknown_age_is_left_alone():
    deleting = make_vm(status=VmStatus.DELETING)
    ageless = make_vm(created=False)
    assert decide([deleting, ageless], [], settings(), NOW) == []


# --- stuck ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", sorted(IN_FLIGHT))
def test_in_flight_rows_past_the_stuck_timeout_fail_with_their_vm(status):
    vm = make_vm()
    row = make_row(status, vm=vm, in_status=STUCK_SECS + 5)
    (action,) = decide([vm], [row], settings(), NOW)
    assert (action.kind, action.instance, action.vm) == (ActionKind.STUCK, row, vm)
    assert action.detail == f"stuck in {status} for {STUCK_SECS + 5} s"


def test_stuck_is_time_in_the_status_even_while_the_pipeline_keeps_polling():
    polled = make_row("initializing", in_status=STUCK_SECS + 1, idle=1)
    at_limit = make_row("initializing", in_status=STUCK_SECS, idle=1)
    assert kinds(decide([], [polled, at_limit], settings(), NOW)) == [
        (ActionKind.STUCK, polled.id, None)
    ]


def test_a_stuck_row_whose_vm_is_already_deleting_fails_without_a_second_delete():
    vm = make_vm(status=VmStatus.DELETING)
    row = make_row("provisioning", vm=vm, in_status=STUCK_SECS + 1)
    assert kinds(decide([vm], [row], settings(), NOW)) == [(ActionKind.STUCK, row.id, None)]


# --- teardowns, leftovers, drift ------------------------------------------------------------------


def test_a_teardown_without_progress_is_resumed_and_a_live_one_is_not():
    stalled = make_row("tearing_down", in_status=3600, idle=STALL_SECS + 1)
    live = make_row("tearing_down", in_status=3600, idle=STALL_SECS)
    actions = decide([], [stalled, live], settings(), NOW)
    assert kinds(actions) == [(ActionKind.RESUME_TEARDOWN, stalled.id, None)]


@pytest.mark.parametrize("status", ["pending", "provisioning", "initializing"])
def test_in_flight_work_without_progress_is_resumed_and_live_work_is_not(status):
    stalled = make_row(status, in_status=STALL_SECS + 10, idle=STALL_SECS + 1)
    live = make_row(status, in_status=STALL_SECS + 10, idle=STALL_SECS)
    actions = decide([], [stalled, live], settings(), NOW)
    assert kinds(actions) == [(ActionKind.RESUME, stalled.id, None)]
    assert actions[0].detail == f"no progress for {int(STALL_SECS) + 1} s"


@pytest.mark.parametrize("status", ["failed", "lost"])
def test_the_vm_of_a_failed_or_lost_row_is_deleted(status):
    vm, deleting = make_vm(age=1), make_vm(status=VmStatus.DELETING)
    row = make_row(status, vm=vm)
    already = make_row(status, vm=deleting)
    without = make_row(status)
    actions = decide([vm, deleting], [row, already, without], settings(), NOW)
    assert kinds(actions) == [(ActionKind.LEFTOVER_VM, row.id, vm)]


def test_a_ready_row_whose_vm_vanished_is_lost_and_respawned_only_when_enabled():
    gone = make_row("ready")
    present_vm = make_vm()
    present = make_row("ready", vm=present_vm)
    assert kinds(decide([present_vm], [gone, present], settings(), NOW)) == [
        (ActionKind.LOST, gone.id, None)
    ]
    respawning = decide([present_vm], [gone, present], settings(reconcile_respawn_lost=True), NOW)
    assert kinds(respawning) == [
        (ActionKind.LOST, gone.id, None),
        (ActionKind.RESPAWN, gone.id, None),
    ]


def test_a_row_that_became_ready_after_the_pass_began_is_not_judged():
    # The listing may have missed a VM created while it ran.
    row = dataclasses.replace(make_row("ready"), status_changed_at=NOW)
    assert decide([], [row], settings(), NOW) == []


# --- runs, over fakes of the ports ----------------------------------------------------------------


@dataclasses.dataclass
class World:
    registry: FakeRegistry
    compute: FakeCompute
    runs: FakeRuns
    locks: FakeLocks
    dispatch: FakeDispatcher
    tenants: FakeTenants
    claims: FakeClaims = dataclasses.field(default_factory=FakeClaims)

    def reconcile(self, *, dry_run=False, confirm_destructive=None, **overrides):
        confirm = (
            {} if confirm_destructive is None else {"confirm_destructive": confirm_destructive}
        )
        s = settings(**overrides)
        return reconcile_once(
            self.registry,
            self.compute,
            self.runs,
            self.locks,
            s,
            now=NOW,
            dry_run=dry_run,
            trigger="test",
            fleet=FleetService(
                self.registry,
                self.dispatch,
                max_instances_per_tenant=s.max_instances_per_tenant,
                tenants=self.tenants,
            ),
            claims=self.claims,
            **confirm,
        )


def world(vms=(), rows=(), **compute_options) -> World:
    compute = FakeCompute(vms, **compute_options)
    tenants = FakeTenants(row.tenant for row in rows)
    return World(
        FakeRegistry(rows, now=NOW), compute, FakeRuns(), FakeLocks(), FakeDispatcher(), tenants
    )


def mixed_world() -> tuple[World, dict]:
    """One of everything reconcile acts on, and a few things it must leave alone."""
    orphan, young, foreign = make_vm(), make_vm(age=5), make_vm(labels={"managed-by": "x"})
    stuck_vm, failed_vm, ready_vm = make_vm(), make_vm(), make_vm()
    rows = {
        "stuck": make_row("provisioning", vm=stuck_vm, in_status=STUCK_SECS + 1),
        "failed": make_row("failed", vm=failed_vm),
        "lost": make_row("ready", tenant="drifty"),
        "teardown": make_row("tearing_down", idle=STALL_SECS + 1),
        "ready": make_row("ready", vm=ready_vm),
    }
    vms = [orphan, young, foreign, stuck_vm, failed_vm, ready_vm]
    return world(vms, rows.values()), {"orphan": orphan, **rows}


def snapshot(w: World):
    return dict(w.registry.rows), list(w.registry.history), dict(w.compute.vms)


def without_results(records):
    return [{k: v for k, v in r.items() if k != "result"} for r in records]


def test_a_dry_run_changes_nothing_and_reports_exactly_what_the_real_run_then_does():
    w, _ = mixed_world()
    before = snapshot(w)
    dry = w.reconcile(dry_run=True, reconcile_respawn_lost=True)
    assert snapshot(w) == before and w.dispatch.sent == []
    assert {r["result"] for r in dry.actions} == {"dry run: nothing done"}

    real = w.reconcile(reconcile_respawn_lost=True)
    assert without_results(real.actions) == without_results(dry.actions)
    assert real.counts == dry.counts
    assert dry.counts | {"vms_listed": 6, "rows_checked": 5} == {
        "orphan": 1,
        "leftover_vm": 1,
        "stuck": 1,
        "lost": 1,
        "respawn": 1,
        "resume": 0,
        "resume_teardown": 1,
        "destructive": 2,
        "held_back": 0,
        "vms_listed": 6,
        "rows_checked": 5,
    }
    assert [r["dry_run"] for r in w.runs.runs.values()] == [True, False]


def test_a_real_run_acts_and_leaves_an_event_on_every_instance_it_touched():
    w, subject = mixed_world()
    summary = w.reconcile(reconcile_respawn_lost=True)
    assert summary.errors == []
    rows, events = w.registry.rows, w.registry.history
    by_instance = {}
    for instance_id, _from, to, reason in events:
        by_instance.setdefault(instance_id, []).append((to, reason))

    assert subject["orphan"].provider_id in w.compute.deleted
    stuck = subject["stuck"]
    assert rows[stuck.id].status is Status.FAILED
    assert rows[stuck.id].reason == f"stuck in provisioning for {STUCK_SECS + 1} s"
    assert stuck.provider_id in w.compute.deleted
    failed = subject["failed"]
    assert failed.provider_id in w.compute.deleted
    deleting = f"reconcile: deleting VM {failed.provider_id}"
    assert by_instance[failed.id] == [(Status.FAILED, deleting)]
    lost = subject["lost"]
    assert rows[lost.id].status is Status.LOST and rows[lost.id].reason == LOST_REASON
    (fresh,) = [r for r in rows.values() if r.request_key == f"respawn:{lost.id}"]
    assert (fresh.tenant, fresh.status) == ("drifty", Status.PENDING)
    teardown = subject["teardown"]
    assert rows[teardown.id].wake_token != teardown.wake_token
    assert w.dispatch.sent == [
        (fresh.id, Status.PENDING, fresh.wake_token),
        (teardown.id, Status.TEARING_DOWN, rows[teardown.id].wake_token),
    ]
    for touched in (stuck, failed, lost, teardown):
        assert by_instance[touched.id], touched.status
    assert rows[subject["ready"].id] == subject["ready"]
    assert len(w.compute.vms) == 3  # the young orphan, the foreign VM, the ready row's VM


def test_a_stuck_row_creating_its_tenants_identity_is_torn_down_by_the_pipeline_not_failed():
    """Its guest may hold the identity: failing the row and deleting the VM here would lose it,
    and a waiting instance would take the claim over and init a second time."""
    vm = make_vm()
    owner = make_row("initializing", vm=vm, in_status=STUCK_SECS + 1)
    w = world([vm], [owner])
    w.claims.pending[owner.tenant] = owner.id

    (record,) = w.reconcile().actions
    row = w.registry.rows[owner.id]
    assert (row.status, row.teardown_mode) == (Status.TEARING_DOWN, "keep")
    assert w.compute.deleted == [] and vm.provider_id in w.compute.vms
    assert w.dispatch.sent == [(owner.id, Status.TEARING_DOWN, row.wake_token)]
    assert row.wake_token != owner.wake_token
    assert record["result"].startswith("tearing down: holds the tenant's identity claim")


def test_a_stuck_row_not_creating_its_tenants_identity_fails_with_its_vm():
    vm, other_vm = make_vm(), make_vm()
    waiting = make_row("initializing", vm=vm, in_status=STUCK_SECS + 1)
    owner = make_row("initializing", vm=other_vm, in_status=60)
    w = world([vm, other_vm], [waiting, owner])
    w.claims.pending[waiting.tenant] = owner.id

    w.reconcile()
    assert w.registry.rows[waiting.id].status is Status.FAILED
    assert w.compute.deleted == [vm.provider_id]


def test_no_respawn_for_a_tenant_that_was_offboarded():
    lost = make_row("ready", tenant="gone-tenant")
    w = world([], [lost])
    w.tenants.record_offboarded("gone-tenant")
    summary = w.reconcile(reconcile_respawn_lost=True)
    assert [r["result"] for r in summary.actions] == ["marked lost", "error"]
    assert "not onboarded" in summary.errors[0]["error"]
    assert list(w.registry.rows) == [lost.id] and w.dispatch.sent == []


def test_a_cloud_error_on_one_action_is_recorded_and_the_run_goes_on():
    a, b = make_vm(), make_vm()
    w = world([a, b], failing=[a.provider_id])
    summary = w.reconcile()
    assert b.provider_id in w.compute.deleted
    assert [(e["vm_id"], e["error"]) for e in summary.errors] == [
        (a.provider_id, "cloud quota exceeded")
    ]
    assert [r["result"] for r in summary.actions] == ["error", f"deleting VM {b.provider_id}"]
    assert w.runs.runs[1]["finished"]


def test_a_listing_that_fails_halfway_decides_nothing():
    ready_vms = [make_vm(), make_vm()]
    rows = [make_row("ready", vm=vm) for vm in ready_vms]
    w = world(ready_vms, rows, broken_listing=True)
    summary = w.reconcile()
    assert summary.actions == [] and w.registry.history == []
    assert summary.errors == [{"kind": "snapshot", "error": "cloud API unavailable"}]


def test_a_second_concurrent_run_does_nothing_and_records_nothing():
    w, _ = mixed_world()
    w.locks.held.add("reconcile")
    before = snapshot(w)
    assert w.reconcile() is None
    assert w.runs.runs == {} and snapshot(w) == before


def test_an_instance_a_pipeline_step_holds_is_skipped_until_the_next_run():
    row = make_row("tearing_down", idle=STALL_SECS + 1)
    w = world([], [row])
    w.locks.held.add(f"instance:{row.id}")
    (record,) = w.reconcile().actions
    assert record["result"].startswith("skipped:") and w.dispatch.sent == []
    w.locks.held.clear()
    (record,) = w.reconcile().actions
    assert record["result"] == "teardown resumed" and len(w.dispatch.sent) == 1


def test_a_run_that_breaks_is_still_finished_in_its_record():
    w = world([make_vm()])
    w.compute.delete_instance = None  # a bug, not a domain error
    with pytest.raises(TypeError):
        w.reconcile()
    (run,) = w.runs.runs.values()
    assert run["finished"] and run["errors"][0]["kind"] == "run"


def test_a_respawn_made_while_the_queue_is_down_is_kept_for_a_later_resume():
    """No later run respawns an instance that is already lost: its replacement row must outlive a
    queue outage (workers resume it on reconnecting) instead of being taken back like a 503."""
    w, subject = mixed_world()
    w.dispatch.on_send = queue_down
    summary = w.reconcile(reconcile_respawn_lost=True)
    lost = subject["lost"]
    (fresh,) = [r for r in w.registry.rows.values() if r.request_key == f"respawn:{lost.id}"]
    assert fresh.status is Status.PENDING
    (record,) = [r for r in summary.actions if r["kind"] == ActionKind.RESPAWN]
    assert record["result"] == f"provisioned instance {fresh.id}"


@pytest.mark.parametrize("breaks", [False, True])
@pytest.mark.parametrize("collecting", [True, False])
def test_a_pass_runs_without_cycle_collection_and_leaves_it_as_it_found_it(breaks, collecting):
    w, _ = mixed_world()
    seen = []
    listing = w.compute.list_managed

    def list_managed(labels):
        seen.append(gc.isenabled())
        return listing(labels)

    w.compute.list_managed = list_managed
    if breaks:
        w.compute.delete_instance = None  # a bug, not a domain error
    was = gc.isenabled()
    (gc.enable if collecting else gc.disable)()
    try:
        if breaks:
            with pytest.raises(TypeError):
                w.reconcile()
        else:
            w.reconcile()
        assert seen == [False] and gc.isenabled() is collecting
    finally:
        (gc.enable if was else gc.disable)()
