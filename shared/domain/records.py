"""Records the registry stores and the domain reasons about."""

import json
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from shared.domain.lifecycle import Status
from shared.domain.tenants import TenantName

VM_NAME_PREFIX = "dark-vm-"


def vm_name_for(instance_id: uuid.UUID) -> str:
    """`dark-vm-<uuid>`: unique per provision, no tenant in the name, a valid YC name."""
    return f"{VM_NAME_PREFIX}{instance_id}"


@dataclass(frozen=True)
class Instance:
    id: uuid.UUID
    tenant: TenantName
    status: Status
    vm_name: str
    idempotency_key: uuid.UUID  # sent to YC as `idempotency-key` on create
    created_at: datetime
    updated_at: datetime
    status_changed_at: datetime
    provider_id: str | None = None
    operation_id: str | None = None
    address: str | None = None
    reason: str | None = None
    ssh_pubkey: str | None = None
    forges: tuple[dict[str, Any], ...] = ()  # public forge registration summary from the guest
    teardown_mode: str | None = None  # "keep" | "retire" once a teardown is requested
    request_key: str | None = None  # the API's Idempotency-Key, if given
    # The pipeline's continuation token (migrations/0003): only a message carrying it may act.
    wake_token: uuid.UUID | None = None


@dataclass(frozen=True, slots=True)
class InstanceState:
    """What reconcile and the resume sweep read of a row (`FleetRegistry.list_by_statuses`): who
    it is, where it is in its lifecycle and since when, and which VM it owns. The same fields
    as its Instance; the rest (keys, forges, tokens) stays unread: a pass reads 100k rows."""

    id: uuid.UUID
    tenant: TenantName
    status: Status
    vm_name: str
    created_at: datetime
    updated_at: datetime
    status_changed_at: datetime
    provider_id: str | None = None
    reason: str | None = None


@dataclass(frozen=True)
class Event:
    instance_id: uuid.UUID
    at: datetime
    from_status: Status | None
    to_status: Status
    reason: str | None = None


class VmStatus(StrEnum):
    """A VM's status as the cloud names it (YC's Instance.Status). A str: compares equal to, and
    serialises as, the cloud's name."""

    STATUS_UNSPECIFIED = "STATUS_UNSPECIFIED"
    PROVISIONING = "PROVISIONING"
    RUNNING = "RUNNING"
    STOPPING = "STOPPING"
    STOPPED = "STOPPED"
    STARTING = "STARTING"
    RESTARTING = "RESTARTING"
    UPDATING = "UPDATING"
    ERROR = "ERROR"
    CRASHED = "CRASHED"
    DELETING = "DELETING"
    # A name this code does not know (a newer cloud API): neither running nor on its way out,
    # which is how every status but RUNNING and DELETING is treated.
    UNKNOWN = "UNKNOWN"

    @classmethod
    def from_cloud(cls, name: str) -> "VmStatus":
        """The member for the cloud's status name; UNKNOWN for a name not listed here."""
        try:
            return cls(name)
        except ValueError:
            return cls.UNKNOWN


@dataclass(frozen=True)
class CloudVm:
    """What the cloud says about one VM."""

    provider_id: str
    name: str
    status: VmStatus
    labels: dict[str, str] = field(default_factory=dict)
    address: str | None = None
    created_at: datetime | None = None


@dataclass(frozen=True)
class OperationState:
    operation_id: str
    done: bool
    provider_id: str | None = None
    error: Exception | None = None  # a CloudError when the operation finished with an error


@dataclass(frozen=True)
class VmSpec:
    name: str
    idempotency_key: str
    labels: dict[str, str]
    image_id: str
    user_data: str | None = None


def instance_summary(instance: Instance) -> dict[str, object]:
    """What a listing shows of `instance`, in JSON's own types: the id as text, the status by value,
    the timestamps in ISO 8601 as `datetime.isoformat()` writes them in UTC. No forges, no key, no
    internal tokens. The gateway's list answers these as they are (services/api/schemas.py's
    InstanceOut declares them); each row carries its own as JSON, written by a trigger
    (migrations/0010_instance_summary_json.sql, which a change here must follow with a migration),
    and FleetRegistry.list_json joins a page of them without making an Instance or a dict first."""
    return {
        "id": str(instance.id),
        "tenant": str(instance.tenant),
        "status": instance.status.value,
        "vm_name": instance.vm_name,
        "provider_id": instance.provider_id,
        "address": instance.address,
        "reason": instance.reason,
        "created_at": _utc_iso(instance.created_at),
        "updated_at": _utc_iso(instance.updated_at),
    }


def summaries_json(summaries: list[dict[str, object]]) -> str:
    """Summaries as one JSON array, written as the gateway's JSON provider (Flask's) writes JSON:
    keys sorted, no whitespace, everything outside printable ASCII escaped."""
    return json.dumps(summaries, sort_keys=True, separators=(",", ":"))


def _utc_iso(value: datetime) -> str:
    # The registry hands out UTC already; converting again would cost a call per value.
    return (value if value.tzinfo is UTC else value.astimezone(UTC)).isoformat()
