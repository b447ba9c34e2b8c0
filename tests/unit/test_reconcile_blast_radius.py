"""Reconcile's blast radius (docs/ARCHITECTURE.md#blast-radius) over the in-memory fakes: at most
RECONCILE_MAX_DESTRUCTIVE actions judged from an absence (orphan deletes, lost marks) per run, or
none of them."""

from shared.domain.lifecycle import Status
from shared.service_layer.reconcile import STALL_SECS, ActionKind
from tests.unit.test_reconcile_decisions import (
    NOW,
    STUCK_SECS,
    decide,
    make_row,
    make_vm,
    settings,
    world,
)


def orphans(n: int) -> list:
    return [make_vm() for _ in range(n)]


def test_a_run_over_the_default_cap_of_10_deletes_no_orphan_and_marks_nothing_lost():
    vms = orphans(8)
    gone = [make_row("ready") for _ in range(3)]
    w = world(vms, gone)
    summary = w.reconcile()
    assert w.compute.deleted == [] and w.registry.history == []
    assert all(w.registry.rows[row.id].status is Status.READY for row in gone)
    assert w.runs.runs[1]["outcome"] == "refused"
    assert summary.outcome == "refused"
    assert summary.counts["held_back"] == 11 and summary.counts["destructive"] == 11
    held = [r for r in summary.actions if r["held_back"]]
    assert sorted(r["kind"] for r in held) == [ActionKind.LOST] * 3 + [ActionKind.ORPHAN] * 8
    assert {r["vm_id"] for r in held if r["kind"] == ActionKind.ORPHAN} == {
        vm.provider_id for vm in vms
    }
    assert all(r["result"].startswith("held back: 11 actions judged from an absence") for r in held)
    assert all('{"confirm_destructive": 11}' in r["result"] for r in held)


def test_a_run_at_the_cap_acts_and_is_applied():
    vms = orphans(2)
    gone = make_row("ready")
    w = world(vms, [gone])
    summary = w.reconcile(reconcile_max_destructive=3)
    assert sorted(w.compute.deleted) == sorted(vm.provider_id for vm in vms)
    assert w.registry.rows[gone.id].status is Status.LOST
    assert summary.outcome == "applied" and w.runs.runs[1]["outcome"] == "applied"
    assert summary.counts["held_back"] == 0
    assert not any(r["held_back"] for r in summary.actions)


def test_a_cap_of_zero_holds_back_every_absence_judged_action():
    w = world(orphans(1))
    summary = w.reconcile(reconcile_max_destructive=0)
    assert w.compute.deleted == [] and summary.outcome == "refused"


def test_actions_judged_from_the_row_still_run_in_a_refused_run():
    stuck_vm, failed_vm = make_vm(), make_vm()
    stuck = make_row("provisioning", vm=stuck_vm, in_status=STUCK_SECS + 1)
    failed = make_row("failed", vm=failed_vm)
    teardown = make_row("tearing_down", idle=STALL_SECS + 1)
    w = world([stuck_vm, failed_vm, *orphans(2)], [stuck, failed, teardown])
    summary = w.reconcile(reconcile_max_destructive=1)
    assert summary.outcome == "refused" and summary.counts["held_back"] == 2
    assert w.registry.rows[stuck.id].status is Status.FAILED
    assert sorted(w.compute.deleted) == sorted([stuck_vm.provider_id, failed_vm.provider_id])
    assert [sent[0] for sent in w.dispatch.sent] == [teardown.id]
    acted = {r["kind"] for r in summary.actions if not r["held_back"]}
    assert acted == {ActionKind.STUCK, "leftover_vm", "resume_teardown"}


def test_a_respawn_is_held_back_with_its_lost_mark():
    gone = [make_row("ready", tenant=f"t{n}") for n in range(2)]
    w = world([], gone)
    summary = w.reconcile(reconcile_max_destructive=1, reconcile_respawn_lost=True)
    assert w.dispatch.sent == [] and w.registry.history == []
    assert len(w.registry.rows) == 2, "no fresh instance was provisioned"
    held = sorted(r["kind"] for r in summary.actions if r["held_back"])
    assert held == [ActionKind.LOST, ActionKind.LOST, ActionKind.RESPAWN, ActionKind.RESPAWN]
    # Respawns are not destructive: the confirmation names only the lost marks.
    assert summary.counts["destructive"] == 2 and summary.counts["held_back"] == 4


def test_a_confirmation_of_at_least_the_count_lets_that_one_run_act():
    w = world(orphans(3))
    short = w.reconcile(reconcile_max_destructive=1, confirm_destructive=2)
    assert short.outcome == "refused" and w.compute.deleted == []
    confirmed = w.reconcile(reconcile_max_destructive=1, confirm_destructive=3)
    assert confirmed.outcome == "applied" and len(w.compute.deleted) == 3

    w.compute.vms.update({vm.provider_id: vm for vm in orphans(3)})
    again = w.reconcile(reconcile_max_destructive=1)
    assert again.outcome == "refused" and len(w.compute.deleted) == 3


def test_a_dry_run_over_the_cap_reports_what_would_be_held_back():
    w = world(orphans(2))
    summary = w.reconcile(dry_run=True, reconcile_max_destructive=1)
    assert summary.outcome == "dry_run" and w.compute.deleted == []
    assert [r["held_back"] for r in summary.actions] == [True, True]
    assert all(r["result"].startswith("dry run: held back") for r in summary.actions)


def test_hold_back_splits_only_absence_judged_actions_and_their_respawns():
    from shared.service_layer.reconcile import hold_back

    vms = orphans(2)
    lost = make_row("ready")
    stuck = make_row("initializing", in_status=STUCK_SECS + 1)
    actions = decide(vms, [lost, stuck], settings(reconcile_respawn_lost=True), NOW)
    allowed, held = hold_back(actions, cap=2, confirmed=0)
    assert [a.kind for a in allowed] == [ActionKind.STUCK]
    assert sorted(a.kind for a in held) == [
        ActionKind.LOST,
        ActionKind.ORPHAN,
        ActionKind.ORPHAN,
        ActionKind.RESPAWN,
    ]
    assert hold_back(actions, cap=2, confirmed=3) == (actions, [])
    assert hold_back(actions, cap=3, confirmed=0) == (actions, [])
