"""Ports: the small interfaces the shared logic needs, implemented by shared/adapters.

A tenant is a `TenantName` (shared/domain/tenants.py): valid and in NFC already, built where the
name came in; implementations take it as it is, and name the rows they read back with one.
"""

# Inside FleetRegistry and TenantDirectory, `list` names a method: their annotations spell the
# builtin `builtins.list`.
from __future__ import annotations

import builtins
import uuid
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Any, Protocol

from shared.domain.capacity import Admission, BudgetUsage, Mutation
from shared.domain.guest import GuestHealth, GuestIdentity
from shared.domain.invites import Invite
from shared.domain.lifecycle import Status
from shared.domain.records import (
    CloudVm,
    Event,
    Instance,
    InstanceState,
    OperationState,
    VmSpec,
)
from shared.domain.secrets import Bundle, SecretsPresence, TenantSecrets
from shared.domain.tenant_records import TenantRecord
from shared.domain.tenants import TenantName
from shared.domain.waits import WaitKind, WaitSample

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
        self, tenant: TenantName, *, request_key: str | None = None, max_live: int | None = None
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
        tenant: TenantName | None = None,
        statuses: Iterable[Status] | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> tuple[builtins.list[Instance], str | None]:
        """A page of rows, newest first, and the cursor of the next page (None on the last).

        `limit` is 1..MAX_PAGE_SIZE (ValueError otherwise); a cursor this registry did not hand
        out → InvalidCursor.
        """

    def list_json(
        self,
        *,
        tenant: TenantName | None = None,
        statuses: Iterable[Status] | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> tuple[str, str | None]:
        """`list`'s page, the same rows and the same cursor, as one JSON array of their
        `instance_summary` objects, exactly as `summaries_json` writes it (both in
        shared/domain/records.py): what the gateway's list answers, built without an Instance or a
        dict per row."""

    def list_by_statuses(self, statuses: Iterable[Status]) -> builtins.list[InstanceState]:
        """Every row in one of `statuses`, oldest first, as its InstanceState (for reconcile and
        resuming work)."""

    def count_live(self, tenant: TenantName) -> int:
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

    def live_counts(self) -> dict[TenantName, int]:
        """Live instances per tenant, for every tenant that has any."""

    def note(self, instance_id: uuid.UUID, reason: str) -> None:
        """Append an event that changes no status (from = to = the current one): an action taken
        on the instance, such as reconcile deleting its leftover VM. InstanceNotFound if no row."""

    def events(self, instance_id: uuid.UUID) -> builtins.list[Event]:
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


class OperationBudget(Protocol):
    """At most N cloud mutations in flight across every worker and host
    (docs/ARCHITECTURE.md#capacity). Slots belong to instances, one at a time each."""

    def acquire(self, instance_id: uuid.UUID, kind: Mutation) -> Admission:
        """A slot for this instance's next mutation, or its place in the queue. Asking again while
        holding one grants it again. A create is granted only when every older pending row
        waiting for a slot can be served first (oldest first)."""
        ...

    def release(self, instance_id: uuid.UUID) -> bool:
        """The instance's operation is done (or failed, or will never start); True when this
        freed a slot (False: it held none)."""
        ...

    def next_in_line(self) -> list[uuid.UUID]:
        """The waiting creates the free slots would be granted to now, oldest first: as many
        pending rows holding no slot as there are free slots."""
        ...

    def usage(self) -> BudgetUsage: ...


class GuestAgent(Protocol):
    """dark-agent on one VM, addressed by its IP. Raises only GuestError subclasses."""

    def health(self, address: str, *, timeout: float | None = None) -> GuestHealth: ...

    def heal(self, address: str) -> dict[str, Any]:
        """The guest's self-repair report, as it sent it (a JSON object)."""

    def init(self, address: str, secrets: TenantSecrets) -> GuestIdentity:
        """A fresh identity: rotates the tenant's SSH key. Only when the tenant has no bundle."""

    def claude(self, address: str, secrets: TenantSecrets) -> None:
        """Hand the node-local Claude token to an initialised (or imported) guest."""

    def export(self, address: str) -> Bundle: ...

    def import_bundle(self, address: str, bundle: Bundle) -> GuestIdentity: ...


class TenantSecretStore(Protocol):
    def read(self, tenant: TenantName) -> TenantSecrets: ...

    def write(
        self, tenant: TenantName, secrets: TenantSecrets, *, cas: int | None = None
    ) -> int: ...

    def presence(self, tenant: TenantName) -> SecretsPresence | None: ...

    def delete(self, tenant: TenantName) -> None: ...


class BundleStore(Protocol):
    """The tenant's encrypted bundle, and the claim on creating its identity
    (docs/ARCHITECTURE.md#invariants). Raises BundleBackendUnavailable when it cannot answer."""

    def get(self, tenant: TenantName) -> Bundle | None:
        """None only when there is certainly no bundle; BundleBackendUnavailable otherwise."""

    def put(self, tenant: TenantName, bundle: Bundle, owner: uuid.UUID) -> bool:
        """Insert-only: stores the first bundle (True); False, storing nothing, if one exists
        or `owner` no longer holds the tenant's identity claim (offboarded meanwhile)."""

    def delete(self, tenant: TenantName) -> None:
        """Removes the bundle and the identity claim together."""

    def claim(self, tenant: TenantName, instance_id: uuid.UUID) -> tuple[uuid.UUID, bool]:
        """(the claim's owner, whether this call made it): only the owner may init a guest."""

    def pending_claim(self, tenant: TenantName) -> uuid.UUID | None:
        """The claim's owner while no bundle is stored; None otherwise."""

    def take_over(self, tenant: TenantName, old_owner: uuid.UUID, new_owner: uuid.UUID) -> bool:
        """Compare-and-set the owner while no bundle is stored; whether it moved."""

    def release(self, tenant: TenantName, owner: uuid.UUID) -> None:
        """Drop `owner`'s claim while no bundle is stored."""


class IdentityClaims(Protocol):
    """Read-only view of the identity claims (reconcile): which instance is creating a tenant's
    identity. Needs no transit key. Raises BundleBackendUnavailable when it cannot answer."""

    def pending_claim(self, tenant: TenantName) -> uuid.UUID | None:
        """The claim's owner while the tenant has no stored bundle; None otherwise."""


class BundleRemover(Protocol):
    """Removes a tenant's identity (offboarding): needs no transit key."""

    def delete(self, tenant: TenantName) -> None:
        """Removes the bundle and the identity claim together, in one transaction; idempotent.
        Raises RegistryUnavailable when the database cannot be reached."""


class Locks(Protocol):
    """Named cross-process locks, taken without waiting. A lock never outlives its holder (a
    process killed while holding one loses it). Raises RegistryUnavailable when the lock backend
    cannot be reached, before or while the lock is held."""

    def hold(self, key: str) -> AbstractContextManager[bool]:
        """Try to take the lock named `key`; the context yields whether it was taken, and
        releases it on exit if it was. Never blocks waiting for another holder."""


class WaitHistory(Protocol):
    """Recent finished waits of each kind, shared by every worker (docs/ARCHITECTURE.md#waits).
    Raises RegistryUnavailable when its backend cannot be reached."""

    def record(self, kind: WaitKind, instance_id: uuid.UUID, sample: WaitSample) -> None:
        """Keep one instance's wait of `kind`; only its first record counts (a step that runs
        twice, or a later step that sees the same finished wait, changes nothing)."""

    def recent(self, kind: WaitKind) -> builtins.list[WaitSample]:
        """The newest samples of `kind`, newest first (a bounded number of them)."""


class ReconcileRuns(Protocol):
    """The record of reconcile runs, each stamped by one clock so runs compare (they never
    overlap: a run is recorded under the reconcile lock). Raises RegistryUnavailable when the
    database cannot be reached."""

    def start(self, *, dry_run: bool, trigger: str) -> int:
        """Record that a run starts now; returns its id."""

    def finish(
        self,
        run_id: int,
        *,
        outcome: str,
        counts: dict[str, int],
        actions: list[dict[str, Any]],
        errors: list[dict[str, Any]],
    ) -> None:
        """Record that the run finished now, how (`applied`, `dry_run` or `refused`; anything
        else → ValueError) and what it did (JSON-ready)."""

    def latest(self, limit: int = 20) -> list[dict[str, Any]]:
        """The newest runs first, as plain dicts (an unfinished run has `finished_at` None).
        `limit` is 1..100 (ValueError otherwise)."""

    def last_real_run(self) -> dict[str, Any] | None:
        """The newest finished run that was not a dry run (as `latest` gives it), or None."""


class TenantDirectory(Protocol):
    """Onboarding state per tenant (times and the secrets' version; never the secrets). Written by
    the onboarding service after each change to the secrets, read by the gateway and reconcile to
    refuse provisioning for a tenant that is not onboarded. Raises RegistryUnavailable when the
    database cannot be reached."""

    def record_onboarded(self, tenant: TenantName, version: int) -> TenantRecord:
        """The tenant's secrets are stored at `version` (a positive int, ValueError otherwise).
        Re-onboarding keeps the first onboarded_at; the version never moves backwards."""

    def record_offboarded(self, tenant: TenantName) -> TenantRecord | None:
        """The tenant's secrets are gone; None (and no row made) for a tenant never recorded."""

    def get(self, tenant: TenantName) -> TenantRecord | None: ...

    def list(self) -> builtins.list[TenantRecord]:
        """Every tenant the directory knows, onboarded or not, by name."""

    def is_onboarded(self, tenant: TenantName) -> bool: ...


class TaskDispatcher(Protocol):
    """Sends the pipeline's messages: a message carries the instance id and its continuation
    token, nothing else; the row's status picks the task (teardown or provision)."""

    def send(
        self,
        instance: Instance,
        token: uuid.UUID,
        *,
        request_id: str | None,
        countdown: float = 0,
        task_id: str | None = None,
    ) -> str:
        """Queue the message (after `countdown` seconds, under `task_id` when given); returns the
        task id. Raises DispatchUnavailable when the task queue cannot be reached."""


class InviteStore(Protocol):
    """Tenants' invites, found by the digest of their token (docs/ARCHITECTURE.md#invites); never
    the token itself. A tenant's current invite is its one invite not revoked.

    Raises RegistryUnavailable when the database cannot be reached.
    """

    def issue(self, tenant: TenantName, digest: bytes, expires_at: datetime) -> Invite:
        """Revoke the tenant's current invite and store this one, in one transaction: of two
        concurrent issues for a tenant, exactly one stays current (the later)."""

    def revoke(self, tenant: TenantName) -> bool:
        """Revoke the tenant's current invite; False if it had none."""

    def find(self, digest: bytes) -> Invite | None:
        """The current invite with this digest, expired or not; None if none (or revoked)."""

    def mark_used(self, digest: bytes) -> None:
        """Record the invite's first use; a later use keeps the first time."""

    def current(self) -> dict[TenantName, Invite]:
        """Every tenant's current invite, by tenant."""
