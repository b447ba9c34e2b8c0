"""Reconcile (docs/ARCHITECTURE.md#reconcile): converge the cloud toward the registry, and record
what was done.

A pass reads the cloud once (`list_managed`, paged by the adapter) and the registry once (every row
that is not retired); `decide`, a pure function, joins the two snapshots by provider id and by VM
name and returns the actions; `reconcile_once` carries them out, or in a dry run only reports them.
The work is O(VMs + rows): nothing is looked up per VM.

The races, and what closes each:
- The cloud is listed *before* the rows are read. A row is written before its VM is created, so
  every listed VM's row is in the snapshot: a VM mid-create is never taken for an orphan. The grace
  period is the second guard.
- A `ready` row is judged lost only if it was ready before the pass began (`now`): the listing pages
  by id and can miss a VM created while it runs, never one that existed throughout.
- Retired rows are not read: they are history and grow without bound. A VM still named after one
  (a create that completed after its teardown found nothing to delete) is then an orphan, deleted
  once older than the grace period, which such a VM soon is.
- Stuck means time in the status (`status_changed_at`), not `updated_at`: the pipeline touches the
  row at every poll, so a chain spinning on a guest that never boots would never look stuck.
- Work is interrupted when an unfinished row (in flight or tearing down) has not been touched
  (`updated_at`) for STALL_SECS: its chain of messages is gone (a worker killed while Redis held
  its message, Postgres or Redis down at the moment a continuation was sent). Resuming rotates the
  row's continuation token, which makes any surviving message of the old chain stale, so resuming
  work that was alive after all costs one redundant idempotent step and never a second chain.
- Each change to a row is made under the instance's lock (the one the pipeline's steps hold) and
  compare-and-set on its status; a row that moved on since the snapshot is skipped, not an error.

Blast radius: an orphan delete or a lost mark is judged from an *absence* (no row for a VM, no VM
for a row), and a registry restored from an old backup or a run pointed at another folder makes
absences of the whole fleet. So a run takes at most RECONCILE_MAX_DESTRUCTIVE of them, or, above
that, none (`hold_back`): it is recorded `refused`, with those actions held back and what would
have been done; the respawns of held-back lost marks are held back with them. What is judged from
a row itself (stuck, a failed row's leftover VM, resuming work) still runs. An operator lifts the
cap for one run with `confirm_destructive`, the count they expect (POST /reconcile).
"""

import contextlib
import gc
import logging
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from shared.domain.capacity import WAITING_REASON
from shared.domain.errors import DomainError, TransitionConflict
from shared.domain.labels import managed_labels
from shared.domain.lifecycle import IN_FLIGHT, Status
from shared.domain.records import CloudVm, InstanceState, VmStatus
from shared.ports import (
    Compute,
    FleetRegistry,
    IdentityClaims,
    Locks,
    ReconcileRuns,
)
from shared.service_layer.fleet import FleetService
from shared.service_layer.retry import MAX_BACKOFF_SECS
from shared.settings import Settings

log = logging.getLogger(__name__)

RECONCILE_LOCK = "reconcile"
# A live chain touches its row at least every MAX_BACKOFF_SECS (its longest wait between attempts);
# twice that without a touch means no chain is left.
STALL_SECS = 2 * MAX_BACKOFF_SECS


class ActionKind(StrEnum):
    """What reconcile does about one VM or row; the value is what run records and metrics say."""

    ORPHAN = "orphan"
    LEFTOVER_VM = "leftover_vm"
    STUCK = "stuck"
    LOST = "lost"
    RESPAWN = "respawn"
    RESUME = "resume"
    RESUME_TEARDOWN = "resume_teardown"


# Judged from an absence: capped per run by RECONCILE_MAX_DESTRUCTIVE.
DESTRUCTIVE = frozenset({ActionKind.ORPHAN, ActionKind.LOST})

# How a run ended (the run record's `outcome`).
APPLIED, DRY_RUN, REFUSED = "applied", "dry_run", "refused"

LOST_REASON = "VM vanished from the cloud"
# Every status but retired: the rows that can still own a VM or a chain of work.
OPEN_STATUSES = frozenset(Status) - {Status.RETIRED}


@dataclass(frozen=True)
class VmAction:
    """About a VM that has no row: an orphan, to delete."""

    detail: str
    vm: CloudVm
    kind: ActionKind = ActionKind.ORPHAN
    instance: None = None

    def record(self) -> dict[str, Any]:
        """The action as the run record stores it (JSON-ready)."""
        return _record(self.kind, self.detail, None, self.vm)


@dataclass(frozen=True)
class RowAction:
    """About a row, and the VM it owns when one was found (`vm`)."""

    kind: ActionKind
    detail: str
    instance: InstanceState
    vm: CloudVm | None = None

    def record(self) -> dict[str, Any]:
        """The action as the run record stores it (JSON-ready)."""
        return _record(self.kind, self.detail, self.instance, self.vm)


Action = VmAction | RowAction


def _record(
    kind: ActionKind, detail: str, inst: InstanceState | None, vm: CloudVm | None
) -> dict[str, Any]:
    return {
        "kind": kind.value,
        "instance_id": str(inst.id) if inst else None,
        "tenant": inst.tenant if inst else None,
        "vm_id": vm.provider_id if vm else None,
        "vm_name": vm.name if vm else inst.vm_name if inst else None,
        "detail": detail,
        "held_back": False,
    }


@dataclass(frozen=True)
class RunSummary:
    """What a run stored: `counts` are the actions decided, per kind, plus the sizes of the two
    snapshots, the actions judged from an absence (`destructive`) and those held back; each
    action's `result` says what came of it; `errors` lists what failed."""

    run_id: int
    dry_run: bool
    outcome: str
    counts: dict[str, int]
    actions: list[dict[str, Any]]
    errors: list[dict[str, Any]]


# --- decisions (pure) -----------------------------------------------------------------------------


def decide(
    vms: Iterable[CloudVm], rows: Iterable[InstanceState], settings: Settings, now: datetime
) -> list[Action]:
    """The actions that converge the cloud (`vms`) and the registry (`rows`, none retired)."""
    labels = managed_labels(settings.deployment)
    # The adapter lists only our VMs; this check is the decision's own, because deleting a VM that
    # is not ours is the one mistake reconcile must never make.
    ours = [vm for vm in vms if labels.items() <= vm.labels.items()]
    rows = list(rows)
    by_id = {vm.provider_id: vm for vm in ours}
    by_name = {vm.name: vm for vm in ours}
    row_ids = {row.provider_id for row in rows if row.provider_id}
    row_names = {row.vm_name for row in rows}

    actions: list[Action] = []
    for vm in ours:
        if vm.provider_id in row_ids or vm.name in row_names or vm.status is VmStatus.DELETING:
            continue
        # A VM whose age is unknown is never old enough: deleting it is the irreversible choice.
        age = (now - vm.created_at).total_seconds() if vm.created_at else None
        if age is not None and age > settings.reconcile_orphan_grace:
            actions.append(VmAction(f"no instance row; created {int(age)} s ago", vm))
    for row in rows:
        own = (by_id.get(row.provider_id) if row.provider_id else None) or by_name.get(row.vm_name)
        actions.extend(_decide_row(row, own, settings, now))
    return actions


def _decide_row(
    row: InstanceState, vm: CloudVm | None, settings: Settings, now: datetime
) -> list[RowAction]:
    live_vm = vm if vm is not None and vm.status is not VmStatus.DELETING else None
    if row.status in IN_FLIGHT:
        in_status = (now - row.status_changed_at).total_seconds()
        # Waiting in line for a cloud operation slot is not being stuck: the queue moves.
        waiting = row.status is Status.PENDING and row.reason == WAITING_REASON
        if in_status > settings.reconcile_stuck and not waiting:
            detail = f"stuck in {row.status.value} for {int(in_status)} s"
            return [RowAction(ActionKind.STUCK, detail, row, live_vm)]
        idle = (now - row.updated_at).total_seconds()
        if idle > STALL_SECS:
            return [RowAction(ActionKind.RESUME, f"no progress for {int(idle)} s", row, vm)]
    elif row.status is Status.READY:
        if vm is None and row.status_changed_at < now:
            lost = RowAction(ActionKind.LOST, LOST_REASON, row)
            if settings.reconcile_respawn_lost:
                return [
                    lost,
                    RowAction(ActionKind.RESPAWN, f"a fresh instance for tenant {row.tenant}", row),
                ]
            return [lost]
    elif row.status is Status.TEARING_DOWN:
        idle = (now - row.updated_at).total_seconds()
        if idle > STALL_SECS:
            return [
                RowAction(ActionKind.RESUME_TEARDOWN, f"no progress for {int(idle)} s", row, vm)
            ]
    elif row.status in (Status.FAILED, Status.LOST) and live_vm is not None:
        detail = f"the instance is {row.status.value} but its VM is still in the cloud"
        return [RowAction(ActionKind.LEFTOVER_VM, detail, row, live_vm)]
    return []


def hold_back(
    actions: list[Action], *, cap: int, confirmed: int = 0
) -> tuple[list[Action], list[Action]]:
    """Split `actions` into those a run takes and those it holds back
    (docs/ARCHITECTURE.md#blast-radius).

    All of them are taken when the actions judged from an absence number at most the cap or the
    operator's confirmation; otherwise none of those is, nor any respawn (it replaces a row only
    once it is marked lost). A cap of 0 thus lets no such action through unconfirmed.
    """
    destructive = sum(a.kind in DESTRUCTIVE for a in actions)
    if destructive <= max(cap, confirmed):
        return list(actions), []
    held = DESTRUCTIVE | {ActionKind.RESPAWN}
    return [a for a in actions if a.kind not in held], [a for a in actions if a.kind in held]


def _held_back_result(destructive: int, cap: int) -> str:
    return (
        f"held back: {destructive} actions judged from an absence (orphan deletes, lost marks),"
        f" above RECONCILE_MAX_DESTRUCTIVE={cap}; if they are right, approve one run with"
        f' POST /reconcile {{"confirm_destructive": {destructive}}}'
    )


# --- a run ----------------------------------------------------------------------------------------


def reconcile_once(
    registry: FleetRegistry,
    compute: Compute,
    runs: ReconcileRuns,
    locks: Locks,
    settings: Settings,
    *,
    now: datetime,
    dry_run: bool,
    trigger: str,
    fleet: FleetService,
    claims: IdentityClaims | None = None,
    confirm_destructive: int = 0,
) -> RunSummary | None:
    """One reconcile pass, recorded in `runs`; None (and nothing recorded) when another pass holds
    the reconcile lock. `fleet` re-sends pipeline messages and respawns (its tenant directory
    keeps a respawn from provisioning for a tenant that was offboarded);
    `claims` (the identity claims' `pending_claim`) keeps the stuck rule from failing the
    instance creating its tenant's identity: it is torn down, so that the pipeline keeps that
    identity first; `confirm_destructive`, an operator's approval of that many actions judged
    from an absence, lifts RECONCILE_MAX_DESTRUCTIVE for this run only."""
    with locks.hold(RECONCILE_LOCK) as taken, _without_cycle_collection():
        if not taken:
            log.info("another reconcile is running; this one does nothing")
            return None
        run_id = runs.start(dry_run=dry_run, trigger=trigger)
        counts = {kind.value: 0 for kind in ActionKind}
        records: list[dict[str, Any]] = []
        errors: list[dict[str, Any]] = []
        outcome = DRY_RUN if dry_run else APPLIED
        try:
            actions = _snapshot_and_decide(registry, compute, settings, now, counts, errors)
            cap = settings.reconcile_max_destructive
            allowed, held = hold_back(actions, cap=cap, confirmed=confirm_destructive)
            destructive = sum(a.kind in DESTRUCTIVE for a in actions)
            counts["destructive"], counts["held_back"] = destructive, len(held)
            if held and not dry_run:
                outcome = REFUSED
            executor = _Executor(
                registry=registry,
                compute=compute,
                locks=locks,
                fleet=fleet,
                request_id=f"reconcile-{run_id}",
                claims=claims,
            )
            for action in actions:
                counts[action.kind] += 1
            for action in allowed:
                records.append(executor.carry_out(action, dry_run, errors))
            result = ("dry run: " if dry_run else "") + _held_back_result(destructive, cap)
            records.extend({**a.record(), "held_back": True, "result": result} for a in held)
            # The snapshots and actions die here, while collection is still off: alive when it
            # resumes, they would be walked once more (see _without_cycle_collection).
            del actions, allowed, held, executor
        except Exception as exc:
            # Recorded, then raised: the run is finished in the record either way.
            errors.append({"kind": "run", "error": f"the run stopped: {exc!r}"})
            raise
        finally:
            runs.finish(run_id, outcome=outcome, counts=counts, actions=records, errors=errors)
    if counts.get("held_back"):
        log.warning(
            "reconcile run %d held back %d actions: %d judged from an absence, above"
            " RECONCILE_MAX_DESTRUCTIVE=%d (confirmed: %d)",
            run_id,
            counts["held_back"],
            counts["destructive"],
            settings.reconcile_max_destructive,
            confirm_destructive,
        )
    log.info(
        "reconcile run %d finished (%s): %s, %d errors",
        run_id,
        outcome,
        ", ".join(f"{k}={v}" for k, v in counts.items() if v),
        len(errors),
    )
    return RunSummary(run_id, dry_run, outcome, counts, records, errors)


def _snapshot_and_decide(
    registry: FleetRegistry,
    compute: Compute,
    settings: Settings,
    now: datetime,
    counts: dict[str, int],
    errors: list[dict[str, Any]],
) -> list[Action]:
    try:
        # The cloud first, then the rows: see the module docstring. A listing that failed halfway
        # would make every unlisted VM look vanished, so it is all or nothing.
        vms = list(compute.list_managed(managed_labels(settings.deployment)))
        rows = registry.list_by_statuses(OPEN_STATUSES)
    except DomainError as exc:
        errors.append({"kind": "snapshot", "error": str(exc)})
        return []
    counts["vms_listed"] = len(vms)
    counts["rows_checked"] = len(rows)
    return decide(vms, rows, settings, now)


@contextlib.contextmanager
def _without_cycle_collection() -> Iterator[None]:
    """No cyclic garbage collection during a pass (its own process: a Celery pool child).

    A pass holds a few objects per VM and per row (100k of each and more) and per action, none
    in a reference cycle: reference counting frees them all, and each collection their
    allocation triggers finds nothing to free. But a full collection walks every object alive,
    and as the snapshots grow the heap by a quarter again and again, they trigger full
    collections over an ever larger heap: at 100k VMs + 100k rows that made the pass grow faster
    than its size. Collection is turned back on afterwards (if it was on), whatever happens.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


@dataclass
class _Executor:
    registry: FleetRegistry
    compute: Compute
    locks: Locks
    fleet: FleetService
    request_id: str
    claims: IdentityClaims | None = None
    marked_lost: set[uuid.UUID] = field(default_factory=set)

    def carry_out(
        self, action: Action, dry_run: bool, errors: list[dict[str, Any]]
    ) -> dict[str, Any]:
        record = action.record()
        if dry_run:
            record["result"] = "dry run: nothing done"
            return record
        try:
            record["result"] = self._act(action)
        except TransitionConflict as exc:
            record["result"] = f"skipped: {exc}"
        except DomainError as exc:
            # One failed action never stops the others; the next run looks again.
            record["result"] = "error"
            errors.append({**action.record(), "error": str(exc)})
            log.warning("reconcile %s failed: %s", action.kind, exc)
        return record

    def _act(self, action: Action) -> str:
        if isinstance(action, VmAction):
            return self._delete_vm(action.vm)
        with self.locks.hold(f"instance:{action.instance.id}") as taken:
            if not taken:
                return "skipped: a pipeline step holds the instance; the next run looks again"
            handlers = {
                ActionKind.STUCK: self._stuck,
                ActionKind.LEFTOVER_VM: self._leftover_vm,
                ActionKind.LOST: self._lost,
                ActionKind.RESPAWN: self._respawn,
                ActionKind.RESUME: self._resume,
                ActionKind.RESUME_TEARDOWN: self._resume,
            }
            return handlers[action.kind](action)

    def _stuck(self, action: RowAction) -> str:
        inst = action.instance
        if self._creating_identity(inst):
            return self._teardown_keeping_identity(action)
        self.registry.transition(inst.id, inst.status, Status.FAILED, action.detail)
        if action.vm is None:
            return "failed"
        return "failed; " + self._delete_instance_vm(inst, action.vm)

    def _creating_identity(self, inst: InstanceState) -> bool:
        # Its guest may hold the tenant's identity, stored nowhere yet. Failed here with its VM
        # deleted, that identity would be lost and a waiting instance would take the claim over
        # and init a second time (docs/ARCHITECTURE.md#invariants).
        return (
            self.claims is not None
            and inst.status is Status.INITIALIZING
            and self.claims.pending_claim(inst.tenant) == inst.id
        )

    def _teardown_keeping_identity(self, action: RowAction) -> str:
        # The pipeline's teardown keeps what the guest holds (or releases the claim) before it
        # deletes the VM; reconcile cannot, having no guest agent nor transit key.
        token = uuid.uuid4()
        reason = f"{action.detail}; torn down so that the tenant's identity is kept first"
        inst = self.registry.transition(
            action.instance.id,
            action.instance.status,
            Status.TEARING_DOWN,
            reason,
            teardown_mode="keep",
            wake_token=token,
        )
        self.fleet.resume(inst, token, request_id=self.request_id)
        return (
            "tearing down: holds the tenant's identity claim; the pipeline's teardown keeps"
            " the identity before it deletes the VM"
        )

    def _leftover_vm(self, action: RowAction) -> str:
        # `decide` makes this action only for a row whose VM it found still in the cloud.
        assert action.vm is not None, "a leftover VM action without its VM"
        return self._delete_instance_vm(action.instance, action.vm)

    def _lost(self, action: RowAction) -> str:
        self.registry.transition(action.instance.id, Status.READY, Status.LOST, LOST_REASON)
        self.marked_lost.add(action.instance.id)
        return "marked lost"

    def _respawn(self, action: RowAction) -> str:
        lost = action.instance
        if lost.id not in self.marked_lost:
            return "skipped: the instance was not marked lost"
        # Keyed by the lost instance: asking twice for its replacement gives the same instance.
        # Kept even when the queue is down: no later run respawns an instance already lost.
        fresh, _ = self.fleet.provision(
            lost.tenant,
            request_key=f"respawn:{lost.id}",
            request_id=self.request_id,
            keep_if_queue_down=True,
        )
        self.registry.note(lost.id, f"reconcile provisioned instance {fresh.id} to replace it")
        return f"provisioned instance {fresh.id}"

    def _resume(self, action: RowAction) -> str:
        token = uuid.uuid4()
        inst = self.registry.update(action.instance.id, action.instance.status, wake_token=token)
        self.fleet.resume(inst, token, request_id=self.request_id)
        what = "teardown" if inst.status is Status.TEARING_DOWN else inst.status.value
        self.registry.note(inst.id, f"reconcile resumed the {what} ({action.detail})")
        return f"{what} resumed"

    def _delete_instance_vm(self, inst: InstanceState, vm: CloudVm) -> str:
        outcome = self._delete_vm(vm)
        self.registry.note(inst.id, f"reconcile: {outcome}")
        return outcome

    def _delete_vm(self, vm: CloudVm) -> str:
        if self.compute.delete_instance(vm.provider_id) is None:
            return f"VM {vm.provider_id} already gone"
        return f"deleting VM {vm.provider_id}"
