"""The simulated cloud's state: VMs, operations, faults, call counts and an event log.

Everything here is in memory and guarded by one lock. A ticker thread moves operations forward in
time; guest start/stop callbacks run outside the lock because starting a guest server is slow.
Errors are `ApiError` with a gRPC status code *name*; sim/yc.py turns them into gRPC statuses.
"""

import base64
import bisect
import copy
import heapq
import ipaddress
import logging
import threading
import time
from collections.abc import Callable
from typing import Protocol

from sim import filters
from sim.model import (
    STATUSES,
    ApiError,
    Fault,
    Operation,
    Vm,
    iso,
    new_id,
    new_security_group_id,
    validate_labels,
    validate_name,
)
from sim.quotas import Limits, Quotas

log = logging.getLogger("sim.world")

MAX_PAGE_SIZE = 1000
DEFAULT_PAGE_SIZE = 100


NETWORKS = ("public", "internal")
_LOOPBACK = ipaddress.ip_network("127.0.0.0/8")


class Guests(Protocol):
    """The guests of running VMs, each serving on every address its VM has."""

    def vm_running(self, vm_id: str, addresses: tuple[str, ...]) -> None: ...

    def vm_readdressed(self, vm_id: str, addresses: tuple[str, ...]) -> None: ...

    def vm_gone(self, vm_id: str) -> None: ...


def guest_addresses(vm: Vm) -> tuple[str, ...]:
    return tuple(a for a in (vm.address, vm.internal_address) if a)


class World:
    def __init__(
        self,
        guests: Guests,
        operation_delay: float,
        security_groups: tuple[str, ...] = (),
        limits: Limits | None = None,
    ) -> None:
        self.guests = guests
        self.operation_delay = operation_delay
        self.quotas = Quotas(limits or Limits())
        self._in_flight: dict[str, int] = {}  # folder id → operations not done
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._vms: dict[str, Vm] = {}
        self._names: dict[tuple[str, str], str] = {}  # (folder id, name) → VM id
        self._by_folder: dict[str, dict[str, Vm]] = {}
        # A folder's VM ids in listing order, sorted when a listing first needs them and dropped
        # when the folder changes: one sort per listing of an unchanged folder, not one per page
        # (which made listing 100k VMs in pages of 1000 quadratic).
        self._sorted_ids: dict[str, list[str]] = {}
        self._operations: dict[str, Operation] = {}
        self._idempotency: dict[tuple[str, str], str] = {}
        self._faults: list[Fault] = []
        self._calls: dict[str, int] = {}
        self._log: list[dict] = []
        self._due: list[tuple[float, int, str]] = []  # (when, seq, operation id)
        self._seq = 0
        # Never reset: an address is never handed out twice, so a stale guest cannot answer for
        # a newer VM.
        self._addresses = 0
        self._hosts = 0
        # Configuration, like the operation delay: a reset keeps them.
        self._security_groups: set[str] = set(security_groups)
        self._closed = False
        self._ticker = threading.Thread(target=self._tick_forever, name="sim-ticker", daemon=True)
        self._ticker.start()

    # --- gRPC-facing ----------------------------------------------------------------------

    def rpc_call(self, method: str) -> None:
        """Count one call and raise the injected RPC fault, if one is due."""
        with self._lock:
            self._calls[method] = self._calls.get(method, 0) + 1
            self.quotas.admit_request()
            code = self._take_fault(method, "rpc")
        if code:
            raise ApiError(code, f"injected fault on {method}")

    def create_vm(self, vm: Vm, idempotency_key: str | None) -> Operation:
        if vm.name:  # YC allows an unnamed instance
            validate_name(vm.name)
        validate_labels(vm.labels)
        with self._lock:
            replay = self._replay("Create", idempotency_key)
            if replay:
                return replay
            unknown = [g for g in vm.security_group_ids if g not in self._security_groups]
            if unknown:
                raise ApiError(
                    "INVALID_ARGUMENT",
                    f"Illegal argument network_interface_specs.security_group_ids: "
                    f"security group {unknown[0]} not found",
                )
            if vm.name and self._name_taken(vm.folder_id, vm.name):
                raise ApiError(
                    "ALREADY_EXISTS", f"Instance with name {vm.name!r} already exists in folder"
                )
            self.quotas.admit_operation(self._in_flight.get(vm.folder_id, 0))
            self._admit_instance(vm)
            now = time.time()
            vm.id = self._fresh_id()
            vm.created_at = now
            vm.status = "PROVISIONING"
            op = Operation(self._fresh_id(), "create", vm.id, now, now, folder_id=vm.folder_id)
            op.fail_with = self._take_fault("Create", "operation")
            # A create that is going to fail never shows a VM: nothing to leak, nothing to log.
            if not op.fail_with:
                self._insert(vm, by="api")
            self._start(op, idempotency_key)
            return copy.copy(op)

    def delete_vm(self, vm_id: str, idempotency_key: str | None) -> Operation:
        with self._lock:
            replay = self._replay("Delete", idempotency_key)
            if replay:
                return replay
            vm = self._vms.get(vm_id)
            if vm is None:
                raise ApiError("NOT_FOUND", f"Instance {vm_id} not found")
            if vm.status == "DELETING":
                raise ApiError("FAILED_PRECONDITION", f"Instance {vm_id} is already being deleted")
            self.quotas.admit_operation(self._in_flight.get(vm.folder_id, 0))
            now = time.time()
            op = Operation(self._fresh_id(), "delete", vm_id, now, now, folder_id=vm.folder_id)
            op.fail_with = self._take_fault("Delete", "operation")
            if not op.fail_with:
                vm.status = "DELETING"
            self._start(op, idempotency_key)
            return copy.copy(op)

    def get_vm(self, vm_id: str) -> Vm:
        with self._lock:
            vm = self._vms.get(vm_id)
            if vm is None:
                raise ApiError("NOT_FOUND", f"Instance {vm_id} not found")
            return copy.copy(vm)

    def list_rendered(
        self,
        folder_id: str,
        page_size: int,
        page_token: str,
        filter_text: str,
        render: Callable[[Vm], bytes],
    ) -> tuple[list[bytes], str]:
        """One page of a folder's VMs, each as `render` makes it, and the token of the next page
        ("" at the end). A VM is rendered once and kept (`Vm.listed`) until it changes, so
        listing an unchanged folder again renders nothing."""
        if not folder_id:
            raise ApiError("INVALID_ARGUMENT", "Illegal argument folder_id: required")
        if page_size < 0 or page_size > MAX_PAGE_SIZE:
            raise ApiError(
                "INVALID_ARGUMENT", f"Illegal argument page_size: must be 0..{MAX_PAGE_SIZE}"
            )
        try:
            # No filter, no predicate: a VM's filter fields cost a timestamp format each.
            predicate = filters.parse(filter_text) if filter_text.strip() else None
        except filters.FilterError as exc:
            raise ApiError("INVALID_ARGUMENT", f"Invalid filter: {exc}") from None
        after = _decode_token(page_token)
        limit = page_size or DEFAULT_PAGE_SIZE
        with self._lock:
            # YC orders by id unless told otherwise; a token is the last id seen, so VMs created
            # or deleted between pages neither repeat nor shift the pages.
            ids = self._sorted_ids.get(folder_id)
            if ids is None:
                ids = self._sorted_ids[folder_id] = sorted(self._by_folder.get(folder_id, {}))
            page: list[bytes] = []
            last = ""
            # By index from the token's place: skipping the ids before it would make every page
            # cost the pages before it.
            for i in range(bisect.bisect_right(ids, after), len(ids)):
                vm = self._vms[ids[i]]
                if predicate is None or predicate(vm.filter_fields()):
                    if len(page) == limit:
                        return page, _encode_token(last)
                    if vm.listed is None:
                        vm.listed = render(vm)
                    page.append(vm.listed)
                    last = vm.id
            return page, ""

    def get_operation(self, op_id: str) -> Operation:
        with self._lock:
            op = self._operations.get(op_id)
            if op is None:
                raise ApiError("NOT_FOUND", f"Operation {op_id} not found")
            return copy.copy(op)

    # --- admin-facing ---------------------------------------------------------------------

    def add_vms(self, vms: list[Vm]) -> list[Vm]:
        """Create VMs behind the control plane's back, all or none."""
        for vm in vms:
            validate_name(vm.name)
            validate_labels(vm.labels)
            if vm.status not in STATUSES:
                raise ApiError("INVALID_ARGUMENT", f"unknown status {vm.status!r}")
        started: list[Vm] = []
        with self._lock:
            names = [(vm.folder_id, vm.name) for vm in vms]
            if len(set(names)) != len(names) or any(self._name_taken(f, n) for f, n in names):
                raise ApiError("ALREADY_EXISTS", "a VM with one of these names already exists")
            for vm in vms:
                vm.id = self._fresh_id()
                if vm.status != "PROVISIONING":
                    vm.address = self._next_address()
                if vm.guest and vm.status == "RUNNING":
                    vm.guest_started = True
                    started.append(vm)
                self._insert(vm, by="admin")
            created = [copy.copy(vm) for vm in vms]
        for vm in started:
            self.guests.vm_running(vm.id, guest_addresses(vm))
        return created

    def move_address(self, vm_id: str, network: str, address: str | None) -> Vm:
        """Give a running VM another address on `network` (a fresh one unless `address` names a
        loopback address no VM holds); its guest then serves there and no longer at the old one.
        What the control plane must notice before it sends a secret."""
        if network not in NETWORKS:
            raise ApiError("INVALID_ARGUMENT", f"network must be one of {', '.join(NETWORKS)}")
        if address is not None:
            try:
                wanted = ipaddress.ip_address(address)
            except ValueError:
                raise ApiError("INVALID_ARGUMENT", "address must be an IPv4 address") from None
            if wanted not in _LOOPBACK or str(wanted) == "127.0.0.1" or wanted.version != 4:
                raise ApiError("INVALID_ARGUMENT", "address must be in 127.0.0.0/8, not 127.0.0.1")
            address = str(wanted)
        with self._lock:
            vm = self._vms.get(vm_id)
            if vm is None:
                raise ApiError("NOT_FOUND", f"Instance {vm_id} not found")
            if vm.status != "RUNNING":
                raise ApiError("FAILED_PRECONDITION", f"Instance {vm_id} is {vm.status}")
            if address is None:
                address = (
                    self._next_address() if network == "public" else self._next_internal_address()
                )
            elif any(address in guest_addresses(other) for other in self._vms.values()):
                raise ApiError("ALREADY_EXISTS", f"address {address} is in use")
            if network == "public":
                vm.address = address
            else:
                vm.internal_address = address
            self._record("readdressed", vm, by="admin", network=network, address=address)
            moved = copy.copy(vm)
        if moved.guest_started:
            self.guests.vm_readdressed(moved.id, guest_addresses(moved))
        return moved

    def add_security_group(self, group_id: str | None) -> str:
        with self._lock:
            group_id = group_id or new_security_group_id()
            self._security_groups.add(group_id)
            return group_id

    def security_groups(self) -> list[str]:
        with self._lock:
            return sorted(self._security_groups)

    def remove_vms(self, *, vm_id: str | None = None, folder_id: str | None = None) -> list[Vm]:
        """Remove one VM, or every VM of a folder, behind the control plane's back."""
        with self._lock:
            if vm_id is not None:
                vm = self._vms.get(vm_id)
                if vm is None:
                    raise ApiError("NOT_FOUND", f"Instance {vm_id} not found")
                doomed = [vm]
            else:
                doomed = list(self._by_folder.get(folder_id or "", {}).values())
            for vm in doomed:
                self._remove(vm, by="admin")
        for vm in doomed:
            if vm.guest_started:
                self.guests.vm_gone(vm.id)
        return doomed

    def vms(self, folder_id: str | None, labels: dict[str, str]) -> list[Vm]:
        with self._lock:
            pool = self._by_folder.get(folder_id, {}) if folder_id else self._vms
            return [
                copy.copy(vm)
                for vm in pool.values()
                if all(vm.labels.get(k) == v for k, v in labels.items())
            ]

    def add_faults(self, faults: list[Fault]) -> None:
        with self._lock:
            self._faults.extend(faults)

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def faults(self) -> list[dict]:
        now = time.time()
        with self._lock:
            return [f.to_json() for f in self._faults if f.active(now)]

    def calls(self) -> dict[str, int]:
        with self._lock:
            return dict(self._calls)

    def count_exhausted(self) -> None:
        """One more RESOURCE_EXHAUSTED answered on an RPC."""
        with self._lock:
            self.quotas.exhausted += 1

    def set_limits(self, body: dict) -> Limits:
        with self._lock:
            self.quotas.limits = self.quotas.limits.updated(body)
            return self.quotas.limits

    def quota_report(self) -> dict:
        with self._lock:
            vms = list(self._vms.values())
            usage = self.quotas.usage(
                len(vms),
                sum(vm.cores for vm in vms),
                sum(vm.memory for vm in vms),
                sum(self._in_flight.values()),
            )
            return {
                "limits": self.quotas.limits.to_json(),
                "usage": usage,
                "resource_exhausted": self.quotas.exhausted,
                "max_concurrent_operations": self.quotas.max_operations,
            }

    def events(self, since: int = 0) -> list[dict]:
        with self._lock:
            return self._log[since:]

    def reset(self) -> None:
        with self._lock:
            gone = [vm.id for vm in self._vms.values() if vm.guest_started]
            self._vms.clear()
            self._names.clear()
            self._by_folder.clear()
            self._sorted_ids.clear()
            self._operations.clear()
            self._idempotency.clear()
            self._faults.clear()
            self._calls.clear()
            self._log.clear()
            self._due.clear()
            self._in_flight.clear()
            self.quotas.reset_counters()
        for vm_id in gone:
            self.guests.vm_gone(vm_id)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._wake.notify()
        self._ticker.join(5)

    # --- internals (call with the lock held) -------------------------------------------------

    def _take_fault(self, method: str, where: str) -> str | None:
        now = time.time()
        self._faults = [f for f in self._faults if f.active(now)]
        for fault in self._faults:
            if fault.method == method and fault.where == where:
                if fault.count is not None:
                    fault.count -= 1
                return fault.code
        return None

    def _admit_instance(self, vm: Vm) -> None:
        limits = self.quotas.limits
        if limits.instances is None and limits.cores is None and limits.memory_gb is None:
            return  # nothing to add up
        vms = self._vms.values()
        self.quotas.admit_instance(
            len(vms),
            sum(v.cores for v in vms),
            sum(v.memory for v in vms),
            vm.cores,
            vm.memory,
        )

    def _replay(self, method: str, key: str | None) -> Operation | None:
        op_id = self._idempotency.get((method, key)) if key else None
        return copy.copy(self._operations[op_id]) if op_id else None

    def _name_taken(self, folder_id: str, name: str) -> bool:
        return (folder_id, name) in self._names

    def _fresh_id(self) -> str:
        while True:
            candidate = new_id()
            if candidate not in self._vms and candidate not in self._operations:
                return candidate

    def _next_address(self) -> str:
        # 127.10.0.1 upward, skipping .0 and .255 in the last octet.
        n = self._addresses
        self._addresses += 1
        high, low = divmod(n, 254)
        return f"127.{10 + high // 256}.{high % 256}.{low + 1}"

    def _next_internal_address(self) -> str:
        # 127.200.0.1 upward: loopback too (the guest serves on it), apart from the public range.
        n = self._hosts
        self._hosts += 1
        high, low = divmod(n, 254)
        return f"127.{200 + high // 256 % 50}.{high % 256}.{low + 1}"

    def _insert(self, vm: Vm, by: str) -> None:
        vm.internal_address = self._next_internal_address()
        self._vms[vm.id] = vm
        if vm.name:
            self._names[(vm.folder_id, vm.name)] = vm.id
        self._by_folder.setdefault(vm.folder_id, {})[vm.id] = vm
        self._sorted_ids.pop(vm.folder_id, None)
        self._record("created", vm, by)

    def _remove(self, vm: Vm, by: str) -> None:
        del self._vms[vm.id]
        self._names.pop((vm.folder_id, vm.name), None)
        folder = self._by_folder[vm.folder_id]
        del folder[vm.id]
        self._sorted_ids.pop(vm.folder_id, None)
        if not folder:
            del self._by_folder[vm.folder_id]
        self._record("deleted", vm, by)

    def _record(self, event: str, vm: Vm, by: str, **detail: str) -> None:
        self._log.append(
            {
                **detail,
                "at": iso(time.time()),
                "event": event,
                "vm_id": vm.id,
                "name": vm.name,
                "folder_id": vm.folder_id,
                "by": by,
            }
        )

    def _start(self, op: Operation, idempotency_key: str | None) -> None:
        self._operations[op.id] = op
        if idempotency_key:
            self._idempotency[(op.kind.capitalize(), idempotency_key)] = op.id
        running = self._in_flight[op.folder_id] = self._in_flight.get(op.folder_id, 0) + 1
        self.quotas.started(running)
        self._seq += 1
        heapq.heappush(self._due, (op.created_at + self.operation_delay, self._seq, op.id))
        self._wake.notify()

    def _finish(self, op: Operation) -> Callable[[], None] | None:
        """Complete one operation; returns the guest callback to run once the lock is released."""
        op.done = True
        op.modified_at = time.time()
        self._in_flight[op.folder_id] = max(0, self._in_flight.get(op.folder_id, 0) - 1)
        vm = self._vms.get(op.vm_id)
        if op.fail_with:
            op.error = (op.fail_with, f"injected fault in the {op.kind} operation")
            return None
        if op.kind == "delete":
            if vm is None:
                return None
            self._remove(vm, by="api")
            return (lambda: self.guests.vm_gone(vm.id)) if vm.guest_started else None
        if vm is None or vm.status != "PROVISIONING":
            op.error = ("CANCELLED", "the instance was deleted before it started")
            return None
        vm.status = "RUNNING"
        vm.address = self._next_address()
        op.result = copy.copy(vm)
        if not vm.guest:
            return None
        vm.guest_started = True
        addresses = guest_addresses(vm)
        return lambda: self.guests.vm_running(vm.id, addresses)

    def _tick_forever(self) -> None:
        while True:
            callbacks = []
            with self._lock:
                while not self._closed and (not self._due or self._due[0][0] > time.time()):
                    self._wake.wait(self._due[0][0] - time.time() if self._due else None)
                if self._closed:
                    return
                now = time.time()
                while self._due and self._due[0][0] <= now:
                    _, _, op_id = heapq.heappop(self._due)
                    op = self._operations.get(op_id)
                    callback = self._finish(op) if op and not op.done else None
                    if callback:
                        callbacks.append(callback)
            for callback in callbacks:
                try:
                    callback()
                except Exception:
                    log.exception("guest callback failed")


def _encode_token(last_id: str) -> str:
    return base64.urlsafe_b64encode(last_id.encode()).decode()


def _decode_token(token: str) -> str:
    if not token:
        return ""
    try:
        return base64.urlsafe_b64decode(token.encode()).decode()
    except ValueError:
        raise ApiError("INVALID_ARGUMENT", "Illegal argument page_token") from None
