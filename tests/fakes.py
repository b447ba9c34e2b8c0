"""In-memory implementations of the ports (shared/ports.py), for tests that need no database,
cloud or queue. Each keeps what it was asked in plain attributes that tests inspect and arrange
(`FakeRegistry.rows`, `FakeCompute.deleted`, `FakeDispatcher.sent`, ...); tests/unit/test_fakes.py
checks that each one still matches its Protocol.
"""

# Inside FakeRegistry and FakeTenants, `list` names a method: their annotations spell the builtin
# `builtins.list`.
from __future__ import annotations

import builtins
import contextlib
import dataclasses
import itertools
import uuid
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime

from shared.domain.capacity import HOLDING_STATUSES, Admission, BudgetUsage, Mutation
from shared.domain.errors import (
    CloudTransient,
    DispatchUnavailable,
    InstanceNotFound,
    InvalidCursor,
    QuotaExceeded,
    TransitionConflict,
)
from shared.domain.lifecycle import LIVE, Status, check_transition
from shared.domain.records import (
    CloudVm,
    Event,
    Instance,
    InstanceState,
    OperationState,
    VmSpec,
    VmStatus,
    instance_summary,
    summaries_json,
    vm_name_for,
)
from shared.domain.tenant_records import TenantRecord
from shared.domain.tenants import TenantName
from shared.domain.waits import WaitKind, WaitSample
from shared.ports import MAX_PAGE_SIZE

# The fields FleetRegistry.transition and .update may set.
_SETTABLE = frozenset(
    {
        "provider_id",
        "operation_id",
        "address",
        "reason",
        "ssh_pubkey",
        "forges",
        "teardown_mode",
        "wake_token",
        "idempotency_key",
    }
)


def _statuses(expected: Status | Iterable[Status]) -> frozenset[Status]:
    return frozenset({expected} if isinstance(expected, Status) else expected)


class FakeRegistry:
    """FleetRegistry over a dict. `history` lists every event as (instance_id, from, to, reason);
    every write is stamped `now`."""

    def __init__(self, rows: Iterable[Instance] = (), *, now: datetime | None = None) -> None:
        self.rows: dict[uuid.UUID, Instance] = {row.id: row for row in rows}
        self.history: builtins.list[tuple] = []
        self.now = now or datetime.now(UTC)

    def create(
        self, tenant: TenantName, *, request_key: str | None = None, max_live: int | None = None
    ) -> tuple[Instance, bool]:
        if request_key is not None:
            for row in self.rows.values():
                if (row.tenant, row.request_key) == (tenant, request_key):
                    return row, False
        if max_live is not None and self.count_live(tenant) >= max_live:
            raise QuotaExceeded(f"tenant {tenant} already has {max_live} live instances")
        instance_id = uuid.uuid4()
        row = Instance(
            id=instance_id,
            tenant=tenant,
            status=Status.PENDING,
            vm_name=vm_name_for(instance_id),
            idempotency_key=uuid.uuid4(),
            created_at=self.now,
            updated_at=self.now,
            status_changed_at=self.now,
            request_key=request_key,
            wake_token=uuid.uuid4(),
        )
        self.rows[row.id] = row
        self.history.append((row.id, None, Status.PENDING, "provision requested"))
        return row, True

    def get(self, instance_id: uuid.UUID) -> Instance | None:
        return self.rows.get(instance_id)

    def list(
        self,
        *,
        tenant: TenantName | None = None,
        statuses: Iterable[Status] | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> tuple[builtins.list[Instance], str | None]:
        if isinstance(limit, bool) or not 1 <= limit <= MAX_PAGE_SIZE:
            raise ValueError(f"limit must be from 1 to {MAX_PAGE_SIZE}")
        wanted = None if statuses is None else set(statuses)
        rows = [
            row
            for row in sorted(self.rows.values(), key=lambda r: r.created_at, reverse=True)
            if (tenant is None or row.tenant == tenant) and (wanted is None or row.status in wanted)
        ]
        try:
            start = int(cursor) if cursor is not None else 0
        except ValueError:
            raise InvalidCursor("not a cursor this registry handed out") from None
        if start < 0:
            raise InvalidCursor("not a cursor this registry handed out")
        page = rows[start : start + limit]
        more = start + limit < len(rows)
        return page, str(start + limit) if more else None

    def list_json(
        self,
        *,
        tenant: TenantName | None = None,
        statuses: Iterable[Status] | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> tuple[str, str | None]:
        page, next_cursor = self.list(tenant=tenant, statuses=statuses, limit=limit, cursor=cursor)
        return summaries_json([instance_summary(row) for row in page]), next_cursor

    def list_by_statuses(self, statuses: Iterable[Status]) -> builtins.list[InstanceState]:
        wanted = set(statuses)
        return [
            InstanceState(
                **{f.name: getattr(row, f.name) for f in dataclasses.fields(InstanceState)}
            )
            for row in self.rows.values()
            if row.status in wanted
        ]

    def count_live(self, tenant: TenantName) -> int:
        return sum(row.tenant == tenant and row.status in LIVE for row in self.rows.values())

    def transition(
        self,
        instance_id: uuid.UUID,
        expected: Status | Iterable[Status],
        target: Status,
        reason: str | None = None,
        **fields: object,
    ) -> Instance:
        expected = _statuses(expected)
        for status in expected:
            check_transition(status, target)
        row = self._row(instance_id)
        if row.status not in expected:
            raise TransitionConflict(f"instance {instance_id} is {row.status.value}")
        self.history.append((instance_id, row.status, target, reason))
        return self._set(
            instance_id, status=target, status_changed_at=self.now, reason=reason, **fields
        )

    def update(
        self,
        instance_id: uuid.UUID,
        expected: Status | Iterable[Status],
        *,
        expected_token: uuid.UUID | None = None,
        **fields: object,
    ) -> Instance:
        row = self._row(instance_id)
        if row.status not in _statuses(expected):
            raise TransitionConflict("moved on")
        if expected_token is not None and row.wake_token != expected_token:
            raise TransitionConflict("the continuation token moved on")
        return self._set(instance_id, **fields)

    def live_counts(self) -> dict[TenantName, int]:
        counts: dict[TenantName, int] = {}
        for row in self.rows.values():
            if row.status in LIVE:
                counts[row.tenant] = counts.get(row.tenant, 0) + 1
        return counts

    def note(self, instance_id: uuid.UUID, reason: str) -> None:
        status = self._row(instance_id).status
        self.history.append((instance_id, status, status, reason))

    def events(self, instance_id: uuid.UUID) -> builtins.list[Event]:
        return [
            Event(instance_id=i, at=self.now, from_status=old, to_status=new, reason=reason)
            for i, old, new, reason in self.history
            if i == instance_id
        ]

    def withdraw(self, instance_id: uuid.UUID, token: uuid.UUID) -> bool:
        row = self.rows.get(instance_id)
        if row is None or row.status is not Status.PENDING or row.wake_token != token:
            return False
        del self.rows[instance_id]
        self.history = [event for event in self.history if event[0] != instance_id]
        return True

    def _row(self, instance_id: uuid.UUID) -> Instance:
        row = self.rows.get(instance_id)
        if row is None:
            raise InstanceNotFound("no such instance")
        return row

    def _set(self, instance_id: uuid.UUID, **fields: object) -> Instance:
        unknown = set(fields) - _SETTABLE - {"status", "status_changed_at"}
        if unknown:
            raise ValueError(f"not a settable field: {sorted(unknown)}")
        row = dataclasses.replace(self.rows[instance_id], updated_at=self.now, **fields)  # type: ignore[arg-type]
        self.rows[instance_id] = row
        return row


class FakeCompute:
    """Compute over a dict of VMs. A create is done at once (the VM is RUNNING); `failing` names
    provider ids whose delete fails; `broken_listing` makes a listing fail after its first VM."""

    def __init__(
        self, vms: Iterable[CloudVm] = (), *, failing: Iterable[str] = (), broken_listing=False
    ) -> None:
        self.vms: dict[str, CloudVm] = {vm.provider_id: vm for vm in vms}
        self.failing = set(failing)
        self.broken_listing = broken_listing
        self.deleted: list[str] = []
        self.operations: dict[str, OperationState] = {}

    def create_instance(self, spec: VmSpec) -> OperationState:
        existing = self.find_by_name(spec.name)
        provider_id = existing.provider_id if existing else "fhm" + uuid.uuid4().hex[:17]
        if existing is None:
            self.vms[provider_id] = CloudVm(
                provider_id=provider_id,
                name=spec.name,
                status=VmStatus.RUNNING,
                labels=dict(spec.labels),
                created_at=datetime.now(UTC),
            )
        return self._operation(provider_id)

    def get_operation(self, operation_id: str) -> OperationState:
        return self.operations[operation_id]

    def get_instance(self, provider_id: str) -> CloudVm | None:
        return self.vms.get(provider_id)

    def find_by_name(self, name: str) -> CloudVm | None:
        return next((vm for vm in self.vms.values() if vm.name == name), None)

    def list_managed(self, labels: dict[str, str]) -> Iterator[CloudVm]:
        for n, vm in enumerate(list(self.vms.values())):
            if self.broken_listing and n == 1:
                raise CloudTransient("cloud API unavailable", code="UNAVAILABLE")
            if all(vm.labels.get(k) == v for k, v in labels.items()):
                yield vm

    def delete_instance(self, provider_id: str) -> OperationState | None:
        if provider_id in self.failing:
            raise CloudTransient("cloud quota exceeded", code="RESOURCE_EXHAUSTED")
        if self.vms.pop(provider_id, None) is None:
            return None
        self.deleted.append(provider_id)
        return OperationState(operation_id="op-" + provider_id, done=False)

    def _operation(self, provider_id: str) -> OperationState:
        state = OperationState(
            operation_id=f"op-{uuid.uuid4().hex[:8]}", done=True, provider_id=provider_id
        )
        self.operations[state.operation_id] = state
        return state


class FakeRuns:
    """ReconcileRuns over a dict: `runs[run_id]` holds what start and finish were given."""

    def __init__(self) -> None:
        self.runs: dict[int, dict] = {}

    def start(self, *, dry_run: bool, trigger: str) -> int:
        run_id = len(self.runs) + 1
        self.runs[run_id] = {"id": run_id, "dry_run": dry_run, "trigger": trigger}
        self.runs[run_id].update(finished=False, outcome=None)
        return run_id

    def finish(
        self, run_id: int, *, outcome: str, counts: dict, actions: list, errors: list
    ) -> None:
        if outcome not in ("applied", "dry_run", "refused"):
            raise ValueError("outcome must be applied, dry_run or refused")
        self.runs[run_id].update(
            counts=counts, actions=actions, errors=errors, outcome=outcome, finished=True
        )

    def latest(self, limit: int = 20) -> list[dict]:
        if isinstance(limit, bool) or not 1 <= limit <= 100:
            raise ValueError("limit must be an integer from 1 to 100")
        return [dict(run) for run in sorted(self.runs.values(), key=lambda r: -r["id"])][:limit]

    def last_real_run(self) -> dict | None:
        real = [run for run in self.latest(100) if run["finished"] and not run["dry_run"]]
        return real[0] if real else None


class FakeLocks:
    """Locks in one process: `held` names the locks taken (a test adds one to make it busy)."""

    def __init__(self, held: Iterable[str] = ()) -> None:
        self.held = set(held)

    @contextlib.contextmanager
    def hold(self, key: str) -> Iterator[bool]:
        if key in self.held:
            yield False
            return
        self.held.add(key)
        try:
            yield True
        finally:
            self.held.discard(key)


class FakeOperationBudget:
    """OperationBudget over a dict of slots (`slots`: instance id → kind), with the adapter's
    rules: the queue and the reclaim rule read `registry`'s rows."""

    def __init__(self, registry: FakeRegistry, budget: int = 15) -> None:
        self.registry = registry
        self.budget = budget
        self.slots: dict[uuid.UUID, Mutation] = {}

    def acquire(self, instance_id: uuid.UUID, kind: Mutation) -> Admission:
        self._reclaim()
        if instance_id in self.slots:
            self.slots[instance_id] = kind
            return Admission(granted=True)
        ahead = 0
        if kind is Mutation.CREATE:
            me = self.registry.rows[instance_id]
            ahead = sum(
                1
                for row in self.registry.rows.values()
                if row.status is Status.PENDING
                and row.id not in self.slots
                and (row.created_at, row.id) < (me.created_at, me.id)
            )
        if len(self.slots) + ahead >= self.budget:
            return Admission(granted=False, ahead=ahead)
        self.slots[instance_id] = kind
        return Admission(granted=True)

    def release(self, instance_id: uuid.UUID) -> bool:
        return self.slots.pop(instance_id, None) is not None

    def next_in_line(self) -> builtins.list[uuid.UUID]:
        self._reclaim()
        waiting = sorted(
            (row.created_at, row.id)
            for row in self.registry.rows.values()
            if row.status is Status.PENDING and row.id not in self.slots
        )
        return [row_id for _, row_id in waiting[: max(0, self.budget - len(self.slots))]]

    def usage(self) -> BudgetUsage:
        self._reclaim()
        waiting = sum(
            1
            for row in self.registry.rows.values()
            if row.status is Status.PENDING and row.id not in self.slots
        )
        return BudgetUsage(in_use=len(self.slots), waiting=waiting)

    def _reclaim(self) -> None:
        for instance_id, kind in list(self.slots.items()):
            row = self.registry.rows.get(instance_id)
            if row is None or row.status not in HOLDING_STATUSES[kind]:
                del self.slots[instance_id]


class FakeWaitHistory:
    """WaitHistory over a dict: `samples[kind]` newest first, as `recent` returns them."""

    def __init__(self, samples: dict[WaitKind, builtins.list[WaitSample]] | None = None) -> None:
        self.samples = {kind: builtins.list((samples or {}).get(kind, ())) for kind in WaitKind}
        self.recorded: dict[tuple[WaitKind, uuid.UUID], WaitSample] = {}

    def record(self, kind: WaitKind, instance_id: uuid.UUID, sample: WaitSample) -> None:
        if (kind, instance_id) not in self.recorded:
            self.recorded[kind, instance_id] = sample
            self.samples[kind].insert(0, sample)

    def recent(self, kind: WaitKind) -> builtins.list[WaitSample]:
        return self.samples[kind][:20]


class FakeTenants:
    """TenantDirectory over a dict; the tenants in `onboarded` start onboarded at version 1."""

    def __init__(self, onboarded: Iterable[str] = ()) -> None:
        self.records: dict[str, TenantRecord] = {}
        for tenant in onboarded:
            self.record_onboarded(TenantName(tenant), 1)

    def record_onboarded(self, tenant: TenantName, version: int) -> TenantRecord:
        if type(version) is not int or version < 1:
            raise ValueError("version must be a positive integer")
        now, old = datetime.now(UTC), self.records.get(tenant)
        record = TenantRecord(
            name=tenant,
            onboarded_at=old.onboarded_at if old and old.onboarded_at else now,
            updated_at=now,
            offboarded_at=old.offboarded_at if old else None,
            secrets_version=max(version, (old.secrets_version or 0) if old else 0),
        )
        self.records[tenant] = record
        return record

    def record_offboarded(self, tenant: TenantName) -> TenantRecord | None:
        if tenant not in self.records:
            return None
        now = datetime.now(UTC)
        record = dataclasses.replace(
            self.records[tenant],
            onboarded_at=None,
            updated_at=now,
            offboarded_at=now,
            secrets_version=None,
        )
        self.records[tenant] = record
        return record

    def get(self, tenant: TenantName) -> TenantRecord | None:
        return self.records.get(tenant)

    def list(self) -> builtins.list[TenantRecord]:
        return [self.records[name] for name in sorted(self.records)]

    def is_onboarded(self, tenant: TenantName) -> bool:
        record = self.records.get(tenant)
        return record is not None and record.onboarded


class FakeClaims:
    """IdentityClaims: `pending[tenant]` is the instance creating the tenant's identity."""

    def __init__(self) -> None:
        self.pending: dict[str, uuid.UUID] = {}

    def pending_claim(self, tenant: TenantName) -> uuid.UUID | None:
        return self.pending.get(tenant)


class FakeDispatcher:
    """TaskDispatcher that records each message as (instance id, its status, token) in `sent`.

    `on_send(instance)` runs first and may raise (DispatchUnavailable: the queue is down);
    `queue_down()` is such a hook."""

    def __init__(self, on_send: Callable[[Instance], None] | None = None) -> None:
        self.on_send = on_send
        self.sent: list[tuple[uuid.UUID, Status, uuid.UUID]] = []
        self._ids = itertools.count(1)

    def send(
        self,
        instance: Instance,
        token: uuid.UUID,
        *,
        request_id: str | None,
        countdown: float = 0,
        task_id: str | None = None,
    ) -> str:
        if self.on_send is not None:
            self.on_send(instance)
        self.sent.append((instance.id, instance.status, token))
        return task_id or f"task-{next(self._ids)}"


def queue_down(_instance: Instance) -> None:
    """A FakeDispatcher `on_send` hook: the task queue is unreachable."""
    raise DispatchUnavailable("the task queue is unreachable")
