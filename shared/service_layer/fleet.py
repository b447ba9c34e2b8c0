"""Fleet commands: the service layer behind the gateway's POST and DELETE.

The row is committed before any task is sent; a task carries the instance id and the row's
continuation token, never anything else (docs/ARCHITECTURE.md#conventions). A new row whose first
task cannot be sent is withdrawn before the 503, so that a client's retry never makes a second VM.
"""

import logging
import uuid

from shared.domain.errors import (
    DispatchUnavailable,
    InstanceNotFound,
    RegistryUnavailable,
    TenantNotOnboarded,
    TransitionConflict,
)
from shared.domain.lifecycle import Status, can_tear_down
from shared.domain.records import Instance
from shared.domain.tenants import TenantName
from shared.ports import FleetRegistry, TaskDispatcher, TenantDirectory

log = logging.getLogger(__name__)

_TASK_IDS = uuid.UUID("6a1c1f0e-6d61-4b1e-9d0a-7a2f8f1b9c33")


def first_task_id(instance_id: uuid.UUID, kind: str) -> str:
    """The id of the first provision/teardown message: a repeated request gets it again."""
    return str(uuid.uuid5(_TASK_IDS, f"{kind}:{instance_id}"))


def _token(instance: Instance) -> uuid.UUID:
    """The row's continuation token, which every row has (the column is NOT NULL)."""
    assert instance.wake_token is not None, "a registry row without a continuation token"
    return instance.wake_token


class FleetService:
    def __init__(
        self,
        registry: FleetRegistry,
        dispatcher: TaskDispatcher,
        *,
        max_instances_per_tenant: int,
        tenants: TenantDirectory | None = None,
    ) -> None:
        self._registry = registry
        self._dispatcher = dispatcher
        self._max = max_instances_per_tenant
        self._tenants = tenants  # the tenant directory; None only where no check is wanted

    def resume(self, instance: Instance, token: uuid.UUID, *, request_id: str | None) -> str:
        """Send the next message of a committed row (its token already written): a row whose
        chain is gone is picked up again. DispatchUnavailable when the queue cannot take it."""
        return self._dispatcher.send(instance, token, request_id=request_id)

    def provision(
        self,
        tenant: TenantName,
        *,
        request_key: str | None,
        request_id: str | None,
        keep_if_queue_down: bool = False,
    ) -> tuple[Instance, str]:
        """Write the pending row and send its first message.

        With the queue down, a row this request created is taken back and DispatchUnavailable
        raised (a client's 503 leaves nothing behind). `keep_if_queue_down` is for callers with no
        client to retry (reconcile's respawn): the row stays and is answered, and is resumed when
        a worker reconnects or reconcile finds its chain missing.
        """
        if self._tenants is not None and not self._tenants.is_onboarded(tenant):
            # Refused before any row or VM exists: there would be nothing to initialise it with.
            raise TenantNotOnboarded(
                f"tenant {tenant!r} is not onboarded: its secrets must be stored through the "
                "onboarding service first"
            )
        instance, created = self._registry.create(
            tenant, request_key=request_key, max_live=self._max or None
        )
        task_id = first_task_id(instance.id, "provision")
        if not created and instance.status is Status.PENDING:
            # A repeat of a request whose message may never have been sent (the queue was down)
            # sends it again, under a fresh token: a duplicate is then harmless, and the first
            # request, should it still be failing, can no longer withdraw the row answered here.
            try:
                instance = self._registry.update(
                    instance.id,
                    Status.PENDING,
                    wake_token=uuid.uuid4(),
                    expected_token=instance.wake_token,
                )
            except (TransitionConflict, InstanceNotFound):
                # Moved on (a worker has it) or taken back by the first request: ask again.
                instance, created = self._registry.create(
                    tenant, request_key=request_key, max_live=self._max or None
                )
        if created or instance.status is Status.PENDING:
            try:
                self._dispatcher.send(
                    instance, _token(instance), request_id=request_id, task_id=task_id
                )
            except DispatchUnavailable:
                if keep_if_queue_down:
                    log.warning(
                        "provision recorded; its message waits for the task queue",
                        extra={"instance_id": instance.id, "tenant": tenant},
                    )
                    return instance, task_id
                if not created:
                    raise  # accepted by an earlier request: it stays, and is resumed later
                return self._withdraw(instance), task_id
        log.info(
            "provision requested" if created else "provision request repeated",
            extra={"instance_id": instance.id, "tenant": tenant},
        )
        return instance, task_id

    def _withdraw(self, instance: Instance) -> Instance:
        """Take back the row of a request whose task could not be queued, so that the 503 leaves
        nothing behind and a retry cannot make a second VM. A row that moved on meanwhile (a
        worker resumed it the moment Redis came back) is under way: it is the answer."""
        try:
            withdrawn = self._registry.withdraw(instance.id, _token(instance))
        except RegistryUnavailable:
            # Postgres went too: the row stays and is resumed later, so the answer names it (a
            # retry with the same Idempotency-Key, or a look at it, cannot double the VM).
            raise DispatchUnavailable(
                "the task queue is unreachable; the request is recorded and will be resumed",
                instance_id=instance.id,
            ) from None
        if withdrawn:
            log.warning(
                "provision withdrawn: the task queue is unreachable",
                extra={"instance_id": instance.id, "tenant": instance.tenant},
            )
            raise DispatchUnavailable(
                "the task queue is unreachable; nothing was recorded: try again later"
            )
        current = self._registry.get(instance.id)
        if current is None:  # removed meanwhile: there is nothing to answer 202 with
            raise DispatchUnavailable("the task queue is unreachable; try again later")
        log.info(
            "provision requested; resumed by a worker",
            extra={"instance_id": instance.id, "tenant": instance.tenant},
        )
        return current

    def teardown(
        self, tenant: TenantName, instance_id: uuid.UUID, *, mode: str, request_id: str | None
    ) -> tuple[Instance, str | None]:
        task_id = first_task_id(instance_id, "teardown")
        for _ in range(5):
            instance = self._registry.get(instance_id)
            if instance is None or instance.tenant != tenant:
                raise InstanceNotFound("no such instance for this tenant")
            if instance.status is Status.RETIRED:
                return instance, None
            token = uuid.uuid4()
            try:
                if instance.status is Status.TEARING_DOWN:
                    # Repeated DELETE: keep the newest mode and re-send, in case the first message
                    # never made it; the new token retires any older message.
                    instance = self._registry.update(
                        instance.id, Status.TEARING_DOWN, teardown_mode=mode, wake_token=token
                    )
                elif can_tear_down(instance.status):
                    instance = self._registry.transition(
                        instance.id,
                        instance.status,
                        Status.TEARING_DOWN,
                        f"teardown requested (mode={mode})",
                        teardown_mode=mode,
                        wake_token=token,
                    )
            except TransitionConflict:
                continue  # another actor moved the row; look again
            self._dispatcher.send(instance, token, request_id=request_id, task_id=task_id)
            log.info("teardown requested", extra={"instance_id": instance.id, "tenant": tenant})
            return instance, task_id
        raise TransitionConflict("the instance kept changing; try again")
