"""Reconcile's blast radius (docs/ARCHITECTURE.md#blast-radius) against real Postgres and the YC
simulator: a registry restored from an old backup, or a run pointed at another folder, deletes
nothing and marks nothing lost; an operator's one-off confirmation lets exactly one run act."""

import pytest

from shared.domain.lifecycle import Status
from tests.integration.test_reconcile import (  # noqa: F401 (fixtures)
    GRACE,
    PROVISIONED,
    harness,
    pool,
)

CAP = 3


@pytest.fixture
def capped(harness):  # noqa: F811
    return harness(RECONCILE_MAX_DESTRUCTIVE=str(CAP))


def test_a_registry_restored_from_an_old_backup_deletes_none_of_the_fleet(capped, pool):  # noqa: F811
    h = capped
    owned = [h.owned_row(*PROVISIONED, age=GRACE + 60) for _ in range(CAP + 2)]
    # The backup predates these rows: their VMs are in the folder, their rows are not.
    with pool.connection() as conn:
        conn.execute("DELETE FROM instances WHERE id = ANY(%s)", ([i.id for i, _ in owned],))
    before = h.vms()

    summary = h.reconcile()
    assert h.vms() == before
    log = h.sim.admin("GET", "/cloud/log")
    assert not [e for e in log if e["event"] == "deleted" and e["vm_id"] in before]

    run = h.runs.latest(1)[0]
    assert run["id"] == summary.run_id and run["outcome"] == "refused"
    held = [(a["kind"], a["vm_id"], a["held_back"]) for a in run["actions"]]
    assert sorted(held) == sorted(("orphan", vm["id"], True) for _, vm in owned)
    assert run["counts"]["held_back"] == CAP + 2
    assert all(a["result"].startswith("held back:") for a in run["actions"])


def test_a_changed_folder_marks_no_ready_instance_lost(harness):  # noqa: F811
    fleet = harness()
    rows = [fleet.owned_row(*PROVISIONED)[0] for _ in range(CAP + 1)]
    # The same deployment, pointed at a new, empty folder: every ready row looks vanished.
    moved = harness(DARK_DEPLOYMENT=fleet.deployment, RECONCILE_MAX_DESTRUCTIVE=str(CAP))
    assert moved.vms() == {}

    summary = moved.reconcile()
    assert [moved.registry.get(r.id).status for r in rows] == [Status.READY] * len(rows)
    assert [moved.events(r)[-1][1] for r in rows] == [Status.READY] * len(rows)
    assert summary.outcome == "refused"
    assert sorted(a["instance_id"] for a in summary.actions if a["kind"] == "lost") == sorted(
        str(r.id) for r in rows
    )
    assert moved.runs.latest(1)[0]["outcome"] == "refused"


def test_a_confirmation_lets_exactly_one_run_act_and_the_next_is_capped_again(capped):
    h = capped
    first = [h.add_vm(age=GRACE + 60) for _ in range(CAP + 1)]
    short = h.reconcile(confirm_destructive=CAP)
    assert short.outcome == "refused"
    assert all(h.vms()[vm["id"]]["status"] == "RUNNING" for vm in first)

    confirmed = h.reconcile(confirm_destructive=CAP + 1)
    assert confirmed.outcome == "applied"
    for vm in first:
        h.assert_going(vm["id"])

    second = [h.add_vm(age=GRACE + 60) for _ in range(CAP + 1)]
    again = h.reconcile()
    assert again.outcome == "refused"
    assert all(h.vms()[vm["id"]]["status"] == "RUNNING" for vm in second)
    stored = {run["id"]: run["outcome"] for run in h.runs.latest(3)}
    assert stored == {short.run_id: "refused", confirmed.run_id: "applied", again.run_id: "refused"}
