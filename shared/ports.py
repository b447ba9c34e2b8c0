"""Ports: the small interfaces the shared logic needs. Adapters in shared/adapters implement them."""

import uuid
from collections.abc import Iterable, Iterator
from typing import Protocol

from shared.domain.lifecycle import Status
from shared.domain.records import CloudVm, Event, Instance, OperationState, VmSpec
from shared.domain.secrets import Bundle, SecretsPresence, TenantSecrets


class FleetRegistry(Protocol):
    def create(self, tenant: str, *, request_key: str | None = None) -> tuple[Instance, bool]:
        """Write a `pending` row; returns (instance, created). Same request_key → the same row."""

    def get(self, instance_id: uuid.UUID) -> Instance | None: ...

    def list(
        self,
        *,
        tenant: str | None = None,
        statuses: Iterable[Status] | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> tuple[list[Instance], str | None]: ...

    def transition(
        self,
        instance_id: uuid.UUID,
        expected: Status | Iterable[Status],
        target: Status,
        reason: str | None = None,
        **fields: object,
    ) -> Instance:
        """Compare-and-set the status, set `fields`, append the event, in one transaction.

        Raises IllegalTransition, TransitionConflict (status was not `expected`), InstanceNotFound.
        """

    def update(self, instance_id: uuid.UUID, expected: Status, **fields: object) -> Instance:
        """Set fields while the row is still in `expected` (records progress); TransitionConflict if not."""

    def events(self, instance_id: uuid.UUID) -> list[Event]: ...


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
    def health(self, address: str, *, timeout: float | None = None) -> dict: ...

    def heal(self, address: str) -> dict: ...

    def init(self, address: str, secrets: TenantSecrets) -> dict: ...

    def claude(self, address: str, secrets: TenantSecrets) -> dict: ...

    def export(self, address: str) -> Bundle: ...

    def import_bundle(self, address: str, bundle: Bundle) -> dict: ...


class TenantSecretStore(Protocol):
    def read(self, tenant: str) -> TenantSecrets: ...

    def write(self, tenant: str, secrets: TenantSecrets, *, cas: int | None = None) -> int: ...

    def presence(self, tenant: str) -> SecretsPresence | None: ...

    def delete(self, tenant: str) -> None: ...


class BundleStore(Protocol):
    def get(self, tenant: str) -> Bundle | None:
        """None only when there is certainly no bundle; BundleBackendUnavailable otherwise."""

    def put(self, tenant: str, bundle: Bundle) -> None: ...

    def delete(self, tenant: str) -> None: ...
