"""Ports: the small interfaces the shared logic needs, implemented by shared/adapters."""

# Lazy annotations: inside FleetRegistry, `list` names the method, and `list[...]` must stay the
# builtin.
from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator
from typing import Protocol

from shared.domain.guest import GuestHealth, GuestIdentity
from shared.domain.lifecycle import Status
from shared.domain.records import CloudVm, Event, Instance, OperationState, VmSpec
from shared.domain.secrets import Bundle, SecretsPresence, TenantSecrets

# The largest page `FleetRegistry.list` returns; the API validates `limit` against it.
MAX_PAGE_SIZE = 500


class FleetRegistry(Protocol):
    """The durable fleet registry: one row per instance, and its lifecycle event log.

    Fields that `transition` and `update` may set: provider_id, operation_id, address, reason,
    ssh_pubkey, forges, teardown_mode, wake_token, idempotency_key; any other name → ValueError.
    A row's `reason` says why it is in its current status: `transition` sets it to its `reason`.
    Raises RegistryUnavailable when the database cannot be reached.
    """

    def create(
        self, tenant: str, *, request_key: str | None = None, max_live: int | None = None
    ) -> tuple[Instance, bool]:
        """Write a `pending` row and its first event; returns (instance, created).

        The same (tenant, request_key) returns the existing row with created=False, even under
        concurrent requests. With `max_live`, refuses (QuotaExceeded) when the tenant already has
        that many LIVE instances; racing creates cannot overshoot it.
        """

    def get(self, instance_id: uuid.UUID) -> Instance | None: ...

    def list(
        self,
        *,
        tenant: str | None = None,
        statuses: Iterable[Status] | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> tuple[list[Instance], str | None]:
        """A page of rows, newest first, and the cursor of the next page (None on the last).

        `limit` is 1..MAX_PAGE_SIZE (ValueError otherwise); a cursor this registry did not hand
        out → InvalidCursor.
        """

    def list_by_statuses(self, statuses: Iterable[Status]) -> list[Instance]:
        """Every row in one of `statuses`, oldest first (for reconcile and resuming work)."""

    def count_live(self, tenant: str) -> int:
        """How many of the tenant's rows are LIVE (have or are getting a VM)."""

    def transition(
        self,
        instance_id: uuid.UUID,
        expected: Status | Iterable[Status],
        target: Status,
        reason: str | None = None,
        **fields: object,
    ) -> Instance:
        """Compare-and-set the status, set `fields`, append the event, in one transaction.

        Raises IllegalTransition (before touching the database) unless every expected → target
        move is allowed, TransitionConflict (status was not `expected`), InstanceNotFound.
        """

    def update(
        self,
        instance_id: uuid.UUID,
        expected: Status | Iterable[Status],
        *,
        expected_token: uuid.UUID | None = None,
        **fields: object,
    ) -> Instance:
        """Set fields while the row is still in `expected`, bumping `updated_at` (progress).

        With no fields it only records progress. With `expected_token`, the row's wake token must
        also still be that one. TransitionConflict if the status (or the token) moved on,
        InstanceNotFound if there is no such row.
        """

    def live_counts(self) -> dict[str, int]:
        """Live instances per tenant, for every tenant that has any."""

    def note(self, instance_id: uuid.UUID, reason: str) -> None:
        """Append an event that changes no status (from = to = the current one): an action taken
        on the instance, such as reconcile deleting its leftover VM. InstanceNotFound if no row."""

    def events(self, instance_id: uuid.UUID) -> list[Event]:
        """The row's lifecycle events, oldest first ([] for an unknown id)."""

    def withdraw(self, instance_id: uuid.UUID, token: uuid.UUID) -> bool:
        """Delete a row nobody has acted on yet (still `pending` with the wake token it was
        created with), its events with it: a request whose task could not be queued takes back
        what it wrote. False, and nothing changed, if the row moved on or does not exist."""


class Compute(Protocol):
    def create_instance(self, spec: VmSpec) -> OperationState:
        """Start a create; returns at once with the operation id (and provider id when known)."""

    def get_operation(self, operation_id: str) -> OperationState: ...

    def get_instance(self, provider_id: str) -> CloudVm | None: ...

    def find_by_name(self, name: str) -> CloudVm | None: ...

    def list_managed(self, labels: dict[str, str]) -> Iterator[CloudVm]:
        """Every VM in the folder carrying all of `labels`, across pages."""

    def delete_instance(self, provider_id: str) -> OperationState | None:
        """Start a delete; None when the VM is already gone."""


class GuestAgent(Protocol):
    """dark-agent on one VM, addressed by its IP. Raises only GuestError subclasses."""

    def health(self, address: str, *, timeout: float | None = None) -> GuestHealth: ...

    def heal(self, address: str) -> dict:
        """The guest's self-repair report, as it sent it (a JSON object)."""

    def init(self, address: str, secrets: TenantSecrets) -> GuestIdentity:
        """A fresh identity: rotates the tenant's SSH key. Only when the tenant has no bundle."""

    def claude(self, address: str, secrets: TenantSecrets) -> None:
        """Hand the node-local Claude token to an initialised (or imported) guest."""

    def export(self, address: str) -> Bundle: ...

    def import_bundle(self, address: str, bundle: Bundle) -> GuestIdentity: ...


class TenantSecretStore(Protocol):
    def read(self, tenant: str) -> TenantSecrets: ...

    def write(self, tenant: str, secrets: TenantSecrets, *, cas: int | None = None) -> int: ...

    def presence(self, tenant: str) -> SecretsPresence | None: ...

    def delete(self, tenant: str) -> None: ...


class BundleStore(Protocol):
    """The tenant's encrypted bundle, and the claim on creating its identity (DESIGN §4
    Invariants). Raises BundleBackendUnavailable when it cannot answer."""

    def get(self, tenant: str) -> Bundle | None:
        """None only when there is certainly no bundle; BundleBackendUnavailable otherwise."""

    def put(self, tenant: str, bundle: Bundle, owner: uuid.UUID) -> bool:
        """Insert-only: stores the first bundle (True); False, storing nothing, if one exists
        or `owner` no longer holds the tenant's identity claim (offboarded meanwhile)."""

    def delete(self, tenant: str) -> None:
        """Removes the bundle and the identity claim together."""

    def claim(self, tenant: str, instance_id: uuid.UUID) -> tuple[uuid.UUID, bool]:
        """(the claim's owner, whether this call made it): only the owner may init a guest."""

    def pending_claim(self, tenant: str) -> uuid.UUID | None:
        """The claim's owner while no bundle is stored; None otherwise."""

    def take_over(self, tenant: str, old_owner: uuid.UUID, new_owner: uuid.UUID) -> bool:
        """Compare-and-set the owner while no bundle is stored; whether it moved."""

    def release(self, tenant: str, owner: uuid.UUID) -> None:
        """Drop `owner`'s claim while no bundle is stored."""


class TaskDispatcher(Protocol):
    """Sends a pipeline message for a row that is already committed: its instance id and its
    continuation token, never anything else. The task (advance or teardown) follows from the
    row's status. Raises DispatchUnavailable when the task queue cannot take the message."""

    def send(
        self,
        instance: Instance,
        token: uuid.UUID,
        *,
        request_id: str | None,
        countdown: float = 0,
        task_id: str | None = None,
    ) -> str:
        """The message's task id."""
