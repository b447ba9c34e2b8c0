"""The provisioning pipeline and teardown (docs/ARCHITECTURE.md#pipeline) as idempotent steps.

`Pipeline.advance` is called with an instance id and a continuation token. It takes the instance's
lock, re-reads the row, drops the message if the token is stale, and runs steps until one has to
wait. It never sleeps: a wait becomes a `Step` with a delay, and the caller schedules the next
message (a short countdown) carrying a fresh token, so one worker slot serves many VMs in flight.

The steps: pending → provisioning (create the VM, poll its operation) → initializing (the guest's
health, then the credentials hand-over of `shared.service_layer.credentials`) → ready; a
teardown deletes the VM (keeping the identity its guest may hold first) and retires the row.

The races, and what closes each:
- Two messages for one instance (a redelivery, a resume, a teardown request): each step runs under
  the instance's lock and only for the row's current token; a busy lock sends the message back
  with the same token, so whichever chain moves the token on makes the other stale.
- The lock vanishes with its Postgres connection mid-step: a wait writes the new token
  compare-and-set on the old one, so of two chains inside the step only one continues.
- A worker killed after the create was sent: the operation id is persisted the moment it is known,
  the VM name is unique per provision, and a create that conflicts adopts the VM of that name; a
  create whose operation failed transiently retries under a fresh idempotency key.
- A teardown or reconcile moves the row while a step runs: every write is compare-and-set on the
  status, and a conflict ends this chain (theirs carries the new token).
- The tenant's last VM retired with mode=retire: the bundle is deleted before the row is retired,
  so a crash between the two retries the delete.
"""

import contextlib
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import assert_never

from shared.domain.capacity import WAITING_REASON, Mutation
from shared.domain.errors import (
    BundleBackendUnavailable,
    CloudConflict,
    CloudError,
    CloudPermanent,
    CloudTransient,
    DispatchUnavailable,
    DomainError,
    GuestError,
    InstanceNotFound,
    TransitionConflict,
)
from shared.domain.labels import managed_labels
from shared.domain.lifecycle import IN_FLIGHT, Status
from shared.domain.records import Instance, VmSpec, VmStatus
from shared.domain.waits import WaitKind
from shared.ports import (
    BundleStore,
    Compute,
    FleetRegistry,
    GuestAgent,
    Locks,
    OperationBudget,
    TaskDispatcher,
    TenantSecretStore,
)
from shared.service_layer.capacity import admit
from shared.service_layer.credentials import (
    AwaitIdentity,
    BackendDown,
    CloudRetry,
    Failed,
    NotUp,
    Provided,
    TenantIdentity,
    at_its_address,
    placed,
)
from shared.service_layer.polling import Waits
from shared.service_layer.retry import MAX_BACKOFF_SECS
from shared.settings import Settings

log = logging.getLogger(__name__)

# The fixed poll intervals; a create and a boot poll on a learned schedule instead when adaptive
# waits are on (shared/service_layer/polling.py).
OPERATION_POLL_SECS = 1.0
GUEST_POLL_SECS = 2.0
LOCK_BUSY_SECS = 1.0
BACKEND_RETRY_SECS = 5.0
# How long a teardown tries to keep the identity of a guest that answers nothing (see _salvaged).
SALVAGE_SECS = 60.0


@dataclass(frozen=True)
class Step:
    """What the caller does next: nothing (`delay is None`), or send `token` after `delay`."""

    delay: float | None = None
    token: uuid.UUID | None = None
    transient: CloudError | None = None  # a cloud error to retry with backoff and a cap


DONE = Step()


class _Continue(Exception):
    """Internal: the row moved forward, run the next step now."""


class Pipeline:
    def __init__(
        self,
        *,
        registry: FleetRegistry,
        compute: Compute,
        guest: GuestAgent,
        secrets: TenantSecretStore,
        bundles: BundleStore,
        locks: Locks,
        capacity: OperationBudget,
        settings: Settings,
        waits: Waits | None = None,
        dispatcher: TaskDispatcher | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.registry = registry
        self.capacity = capacity
        # Wakes the next waiters when a slot is freed (None: they find it at their next ask).
        self.dispatcher = dispatcher
        self.compute = compute
        self.guest = guest
        self.bundles = bundles
        self.locks = locks
        self.settings = settings
        self.waits = waits or Waits()
        self.clock = clock
        self.identity = TenantIdentity(
            guest=guest, bundles=bundles, registry=registry, secrets=secrets, compute=compute
        )

    # --- entry points -------------------------------------------------------------------------

    def advance(self, instance_id: uuid.UUID, token: uuid.UUID) -> Step:
        with self.locks.hold(f"instance:{instance_id}") as taken:
            if not taken:
                # Another message for this instance is being worked on right now. Come back with
                # the same token: if that work moves the token on, this message becomes stale.
                return Step(delay=LOCK_BUSY_SECS, token=token)
            instance = self.registry.get(instance_id)
            if instance is None or instance.wake_token != token:
                return DONE
            for _ in range(10):
                try:
                    return self._step(instance)
                except _Continue:
                    instance = self.registry.get(instance_id)
                    if instance is None:
                        return DONE
                except TransitionConflict:
                    # Someone else (a teardown request, reconcile) moved the row: their message
                    # carries the new token and takes over.
                    return DONE
            return self._wait(instance, 0)

    def give_up(self, instance_id: uuid.UUID, token: uuid.UUID, error: CloudError) -> Step:
        """The transient-retry cap was reached: a provision fails; a teardown keeps trying slowly
        (it must end with the VM gone, so it never gives up)."""
        with self.locks.hold(f"instance:{instance_id}") as taken:
            instance = self.registry.get(instance_id)
            if not taken or instance is None or instance.wake_token != token:
                return DONE
            if instance.status in IN_FLIGHT:
                return self._fail(instance, f"{error} (gave up after repeated attempts)")
            if instance.status is Status.TEARING_DOWN:
                self.registry.update(instance.id, Status.TEARING_DOWN, reason=f"delete: {error}")
                return self._wait(instance, MAX_BACKOFF_SECS)
            return DONE

    # --- the state machine --------------------------------------------------------------------

    def _step(self, instance: Instance) -> Step:
        status = instance.status
        if status is Status.PENDING:
            # A row waits for its cloud operation slot here, in line (shared/adapters/capacity.py).
            delay = self._admit(instance, Mutation.CREATE)
            if delay is not None:
                return self._wait_for_capacity(instance, delay)
            moved = self._move(instance, Status.PROVISIONING, f"creating VM {instance.vm_name}")
            return self._create_vm(moved, admitted=True)
        if status is Status.PROVISIONING:
            return self._provisioning(instance)
        if status is Status.INITIALIZING:
            return self._initializing(instance)
        if status is Status.TEARING_DOWN:
            return self._tearing_down(instance)
        return DONE

    def _provisioning(self, instance: Instance) -> Step:
        released = False
        try:
            if instance.provider_id is None and instance.operation_id is None:
                return self._create_vm(instance)
            if instance.operation_id is not None:
                op = self.compute.get_operation(instance.operation_id)
                if not op.done:
                    return self._poll_later(instance, WaitKind.CREATE, OPERATION_POLL_SECS)
                self._release(instance)  # the cloud's operation is over
                released = True
                if op.error is not None:
                    return self._create_failed(instance, op.error)
                self._learn(instance, WaitKind.CREATE)
                if instance.provider_id is None and op.provider_id:
                    instance = self.registry.update(
                        instance.id, Status.PROVISIONING, provider_id=op.provider_id
                    )
            vm = self.compute.get_instance(instance.provider_id) if instance.provider_id else None
        except CloudTransient as exc:
            return Step(transient=exc)
        except CloudError as exc:
            return self._fail(instance, f"cloud error: {exc}")
        if vm is None:
            return self._fail(instance, "the VM disappeared while it was being created")
        if vm.status != VmStatus.RUNNING:
            return self._wait(instance, OPERATION_POLL_SECS)
        if not vm.address:
            return self._fail(instance, "the VM has no IPv4 address on the guest network")
        if not released:
            self._release(instance)  # running: whatever created it is over (adopted too)
        moved = self._move(
            instance, Status.INITIALIZING, f"VM running at {vm.address}", address=vm.address
        )
        # Its guest has only begun to boot: the first health check waits if the boots learned
        # so far say it cannot answer yet.
        first = self.waits.first_poll(WaitKind.BOOT, 0.0, GUEST_POLL_SECS)
        if first > 0:
            return self._wait(moved, first)
        raise _Continue()

    def _create_vm(self, instance: Instance, *, admitted: bool = False) -> Step:
        spec = VmSpec(
            name=instance.vm_name,
            idempotency_key=str(instance.idempotency_key),
            labels={**managed_labels(self.settings.deployment), "instance": str(instance.id)},
            image_id=self.settings.vm_image or "",
        )
        # Held since the row left pending (`admitted`, in this very step); asked again for a row
        # that was already provisioning (a create retried after a failed operation, a resumed
        # chain, a row from before the budget existed).
        delay = None if admitted else self._admit(instance, Mutation.CREATE)
        if delay is not None:
            return self._wait(instance, delay)
        try:
            op = self.compute.create_instance(spec)
        except CloudConflict:
            # Our own earlier attempt (the name is unique per provision): adopt that VM.
            vm = self.compute.find_by_name(instance.vm_name)
            if vm is None:
                return self._wait(instance, OPERATION_POLL_SECS)
            self.registry.update(instance.id, Status.PROVISIONING, provider_id=vm.provider_id)
            # On the timeline too: an operator asking where the VM came from finds the answer.
            self.registry.note(
                instance.id, f"adopted the existing VM {vm.provider_id} named {instance.vm_name}"
            )
            log.info("adopted existing VM %s", vm.provider_id, extra={"instance_id": instance.id})
            raise _Continue() from None
        except CloudTransient as exc:
            return Step(transient=exc)
        except CloudPermanent as exc:
            return self._fail(instance, f"cloud refused to create the VM: {exc}")
        # Persisted the moment it is known, so a crash after this line never creates twice.
        instance = self.registry.update(
            instance.id,
            Status.PROVISIONING,
            operation_id=op.operation_id,
            provider_id=op.provider_id,
        )
        # Polled at once only if the creates learned so far say it may be done already.
        first = self.waits.first_poll(WaitKind.CREATE, self._elapsed(instance), OPERATION_POLL_SECS)
        if first > 0 and not op.done:
            return self._wait(instance, first)
        raise _Continue()

    def _create_failed(self, instance: Instance, error: Exception) -> Step:
        if isinstance(error, CloudTransient):
            # The failed operation created nothing. A retry under the same idempotency key would
            # return that same failed operation, so the next attempt gets a fresh key.
            self.registry.update(
                instance.id,
                Status.PROVISIONING,
                operation_id=None,
                provider_id=None,
                idempotency_key=uuid.uuid4(),
            )
            return Step(transient=error)
        return self._fail(instance, f"cloud could not create the VM: {error}")

    def _initializing(self, instance: Instance) -> Step:
        """Health, then the credentials hand-over; then ready, a wait, or failed."""
        waited = (self.clock() - instance.status_changed_at).total_seconds()
        _, address = placed(instance)
        try:
            self.guest.health(address)
        except GuestError as exc:
            # Unreachable, 503, or a health answer that is not one: not ready yet.
            return self._not_up(instance, waited, str(exc))
        self._learn(instance, WaitKind.BOOT)
        outcome = self.identity.hand_over(instance)
        match outcome:
            case Provided():
                return self._ready(instance, outcome)
            case AwaitIdentity():
                # Another instance is creating the tenant's identity: import it once stored.
                return self._wait(instance, GUEST_POLL_SECS)
            case NotUp(why=why, guest_up=guest_up):
                return self._not_up(instance, waited, why, guest_up=guest_up)
            case Failed(reason=reason, guest_up=guest_up):
                return self._fail(instance, reason, guest_up=guest_up)
            case BackendDown(error=error):
                # Never proceed without them, and never read "unavailable" as "absent".
                log.warning(
                    "credentials backend unavailable: %s", error, extra={"instance_id": instance.id}
                )
                return self._wait(instance, BACKEND_RETRY_SECS)
            case CloudRetry(error=error):
                return Step(transient=error)
            case _:
                assert_never(outcome)

    def _not_up(
        self, instance: Instance, waited: float, why: str, *, guest_up: bool = True
    ) -> Step:
        boot_timeout = self.settings.guest_boot_timeout
        if waited > boot_timeout:
            reason = f"guest did not come up within {int(boot_timeout)} s: {why}"
            return self._fail(instance, reason, guest_up=guest_up)
        log.info("guest not ready: %s", why, extra={"instance_id": instance.id})
        return self._poll_later(instance, WaitKind.BOOT, GUEST_POLL_SECS)

    def _ready(self, instance: Instance, provided: Provided) -> Step:
        identity = provided.identity
        self.registry.transition(
            instance.id,
            Status.INITIALIZING,
            Status.READY,
            provided.reason,
            ssh_pubkey=identity.ssh_pubkey,
            forges=[f.public_summary() for f in identity.forges],
        )
        log.info("instance ready: %s", provided.reason, extra={"instance_id": instance.id})
        return DONE

    def _tearing_down(self, instance: Instance) -> Step:
        try:
            if instance.provider_id:
                vm = self.compute.get_instance(instance.provider_id)
            else:
                vm = self.compute.find_by_name(instance.vm_name)
            if vm is not None:
                if vm.status != VmStatus.DELETING:
                    # Asked for the identity only at the address it was given
                    # (docs/ARCHITECTURE.md#pipeline).
                    up = at_its_address(vm, instance.address)
                    if not self._salvaged(instance, guest_up=up):
                        return self._wait(instance, GUEST_POLL_SECS)
                    delay = self._admit(instance, Mutation.DELETE)
                    if delay is not None:
                        return self._wait_for_capacity(instance, delay)
                    op = self.compute.delete_instance(vm.provider_id)
                    self.registry.update(
                        instance.id,
                        Status.TEARING_DOWN,
                        provider_id=vm.provider_id,
                        operation_id=op.operation_id if op else instance.operation_id,
                    )
                return self._wait(instance, OPERATION_POLL_SECS)
        except CloudTransient as exc:
            return Step(transient=exc)
        except CloudError as exc:
            # Teardown never gives up: say why it is stuck and keep trying slowly.
            self.registry.update(instance.id, Status.TEARING_DOWN, reason=f"delete failed: {exc}")
            return self._wait(instance, MAX_BACKOFF_SECS)
        self._release(instance)  # the VM is gone: its delete is over
        if instance.teardown_mode == "retire" and self.registry.count_live(instance.tenant) == 0:
            # Before the row is retired, so that a crash here retries the delete.
            self.bundles.delete(instance.tenant)
            reason = "VM deleted; tenant bundle deleted (mode=retire)"
        else:
            reason = "VM deleted"
        self.registry.transition(instance.id, Status.TEARING_DOWN, Status.RETIRED, reason)
        log.info("instance retired", extra={"instance_id": instance.id})
        return DONE

    # --- helpers ------------------------------------------------------------------------------

    def _move(self, instance: Instance, target: Status, reason: str, **fields: object) -> Instance:
        moved = self.registry.transition(instance.id, instance.status, target, reason, **fields)
        log.info("%s → %s", instance.status, target, extra={"instance_id": instance.id})
        return moved

    def _wait(self, instance: Instance, delay: float) -> Step:
        # Compared with the token this chain carried, not only the status: if the instance lock
        # vanished with its connection mid-step, two chains could both be here, and only one may
        # continue.
        token = uuid.uuid4()
        self.registry.update(
            instance.id, instance.status, expected_token=instance.wake_token, wake_token=token
        )
        return Step(delay=delay, token=token)

    def _admit(self, instance: Instance, kind: Mutation) -> float | None:
        return admit(
            self.capacity,
            self.settings.yc_max_concurrent_operations,
            instance.id,
            kind,
            handed_over=self.dispatcher is not None,
        )

    def _release(self, instance: Instance) -> None:
        """Give back the instance's slot and, if that freed one, hand it over at once to the
        oldest waiter(s) rather than leave it idle until their next ask. Best effort: a waiter
        still asks on its own."""
        if not self.capacity.release(instance.id) or self.dispatcher is None:
            return
        try:
            for waiter_id in self.capacity.next_in_line():
                self._wake(waiter_id, self.dispatcher)
        except DomainError as exc:
            log.warning("could not wake the next in line: %s", exc)

    def _wake(self, waiter_id: uuid.UUID, dispatcher: TaskDispatcher) -> None:
        """A message for a waiting row now, under a fresh token: its delayed message becomes
        stale, so the row still has exactly one chain. The token is set compare-and-set on the
        one read: if the row's own chain (or another waker) moved it meanwhile, that chain goes
        on and this one sends nothing."""
        waiter = self.registry.get(waiter_id)
        if waiter is None or waiter.status is not Status.PENDING:
            return
        token = uuid.uuid4()
        try:
            woken = self.registry.update(
                waiter.id, Status.PENDING, expected_token=waiter.wake_token, wake_token=token
            )
        except (TransitionConflict, InstanceNotFound):
            return
        try:
            dispatcher.send(woken, token, request_id=None)
        except DispatchUnavailable as exc:
            # Nothing was sent: give the row its delayed message back.
            log.warning(
                "could not wake a waiting instance: %s", exc, extra={"instance_id": waiter.id}
            )
            with contextlib.suppress(TransitionConflict, InstanceNotFound):
                self.registry.update(
                    waiter.id, Status.PENDING, expected_token=token, wake_token=waiter.wake_token
                )

    def _wait_for_capacity(self, instance: Instance, delay: float) -> Step:
        """Like `_wait`, saying why (no event: a long queue would flood the timeline)."""
        token = uuid.uuid4()
        self.registry.update(
            instance.id,
            instance.status,
            expected_token=instance.wake_token,
            wake_token=token,
            reason=WAITING_REASON,
        )
        return Step(delay=delay, token=token)

    def _poll_later(self, instance: Instance, kind: WaitKind, fixed: float) -> Step:
        return self._wait(instance, self.waits.delay(kind, self._elapsed(instance), fixed))

    def _learn(self, instance: Instance, kind: WaitKind) -> None:
        """The wait of `kind` is over: a sample for the next ones (docs/ARCHITECTURE.md#waits).
        Every poll that finds it unfinished is followed by a wait, which writes the row, so the
        row's last write brackets the finish from below."""
        not_done_at = (instance.updated_at - instance.status_changed_at).total_seconds()
        self.waits.finished(kind, instance.id, not_done_at, self._elapsed(instance))

    def _elapsed(self, instance: Instance) -> float:
        return (self.clock() - instance.status_changed_at).total_seconds()

    def _salvaged(self, instance: Instance, *, guest_up: bool) -> bool:
        """Whether the VM may go now. A teardown mid-init (the claim owner, no bundle stored yet)
        first keeps the identity its guest may hold, trying for a while if it cannot answer."""
        try:
            if self.identity.salvage(instance, guest_up=guest_up):
                return True
        except BundleBackendUnavailable as exc:
            log.warning("could not keep the identity: %s", exc, extra={"instance_id": instance.id})
        waited = (self.clock() - instance.status_changed_at).total_seconds()
        if waited <= min(SALVAGE_SECS, self.settings.guest_boot_timeout):
            return False
        try:
            # Its identity goes with the VM: let another instance create the tenant's.
            self.identity.release(instance)
        except BundleBackendUnavailable:
            return False
        return True

    def _fail(self, instance: Instance, reason: str, *, guest_up: bool = True) -> Step:
        if instance.status is Status.INITIALIZING:
            # Before the row says failed: an instance waiting on this one's claim then sees it
            # either stored or released, never taken over while the identity is being kept.
            try:
                self.identity.salvage(instance, guest_up=guest_up)
            except DomainError as exc:
                log.warning(
                    "could not keep the identity: %s", exc, extra={"instance_id": instance.id}
                )
        self.registry.transition(instance.id, instance.status, Status.FAILED, reason)
        self._release(instance)
        log.warning("instance failed: %s", reason, extra={"instance_id": instance.id})
        self._clean_up_vm(instance)
        return DONE

    def _clean_up_vm(self, instance: Instance) -> None:
        """Best effort; the reconciler deletes what this misses (failed rows with a VM)."""
        try:
            if instance.provider_id:
                self.compute.delete_instance(instance.provider_id)
            else:
                vm = self.compute.find_by_name(instance.vm_name)
                if vm is not None:
                    self.compute.delete_instance(vm.provider_id)
        except CloudError as exc:
            log.warning(
                "could not delete the failed instance's VM: %s",
                exc,
                extra={"instance_id": instance.id},
            )


def resume_unfinished(
    registry: FleetRegistry, send: Callable[[Instance, uuid.UUID], object]
) -> int:
    """Give every unfinished instance a fresh message (a provisioner worker starting up).

    A new token makes any older message for the row stale, so this never doubles the work.
    """
    count = 0
    for row in registry.list_by_statuses(IN_FLIGHT | {Status.TEARING_DOWN}):
        token = uuid.uuid4()
        try:
            instance = registry.update(row.id, row.status, wake_token=token)
        except (TransitionConflict, InstanceNotFound):
            continue  # moved on, or withdrawn by a gateway whose dispatch failed
        send(instance, token)
        count += 1
    return count
