"""The simulated cloud's records and the YC rules they are checked against."""

import dataclasses
import re
import secrets
import string
import time
from collections.abc import Iterable
from datetime import UTC, datetime

NAME_RE = re.compile(r"[a-z]([-_a-z0-9]{0,61}[a-z0-9])?")
LABEL_KEY_RE = re.compile(r"[a-z][-_./\\@0-9a-z]{0,62}")
LABEL_VALUE_RE = re.compile(r"[-_./\\@0-9a-z]{0,63}")
MAX_LABELS = 64
FAULT_METHODS = frozenset({"Create", "Delete", "Get", "List", "OperationGet"})
OPERATION_FAULT_METHODS = frozenset({"Create", "Delete"})
STATUSES = frozenset(
    {"PROVISIONING", "RUNNING", "STOPPING", "STOPPED", "STARTING", "RESTARTING", "UPDATING"}
    | {"ERROR", "CRASHED", "DELETING"}
)
_ID_ALPHABET = string.ascii_lowercase + string.digits


class ApiError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclasses.dataclass
class Vm:
    id: str
    folder_id: str
    name: str
    labels: dict[str, str]
    status: str
    created_at: float
    zone_id: str = "ru-central1-a"
    platform_id: str = "standard-v3"
    subnet_id: str = ""
    cores: int = 2
    memory: int = 4 << 30
    core_fraction: int = 100
    metadata: dict[str, str] = dataclasses.field(default_factory=dict)
    address: str | None = None  # the one-to-one NAT address, once RUNNING
    internal_address: str = ""  # the VPC address, from creation
    security_group_ids: list[str] = dataclasses.field(default_factory=list)
    guest: bool = True  # start a guest when the VM is running (bulk admin VMs have none)
    guest_started: bool = False
    # The VM as a ListInstances answer carries it, serialized (sim/yc.py renders it), kept until
    # the VM changes: setting any other attribute drops it, so a listing never shows a stale VM.
    listed: bytes | None = dataclasses.field(default=None, repr=False, compare=False)

    def __setattr__(self, name: str, value: object) -> None:
        if name != "listed":
            object.__setattr__(self, "listed", None)
        object.__setattr__(self, name, value)

    def filter_fields(self) -> dict[str, str]:
        return {
            "id": self.id,
            "name": self.name,
            "created_at": iso(self.created_at),
            "status": self.status,
            "zone_id": self.zone_id,
            "platform_id": self.platform_id,
            "host_id": "",
        }

    def to_json(self) -> dict:
        return {
            "id": self.id,
            "name": self.name,
            "folder_id": self.folder_id,
            "labels": dict(self.labels),
            "status": self.status,
            "address": self.address,
            "internal_address": self.internal_address,
            "security_group_ids": list(self.security_group_ids),
            "created_at": iso(self.created_at),
        }


@dataclasses.dataclass
class Operation:
    id: str
    kind: str  # "create" | "delete"
    vm_id: str
    created_at: float
    modified_at: float
    done: bool = False
    error: tuple[str, str] | None = None  # (code name, message)
    fail_with: str | None = None  # an injected fault: the code it will finish with
    result: Vm | None = None  # the instance as it was when the create finished
    folder_id: str = ""  # where it counts against the concurrent-operations quota


@dataclasses.dataclass
class Fault:
    method: str
    code: str
    where: str
    count: int | None = None
    until: float | None = None

    def active(self, now: float) -> bool:
        return (self.count or 0) > 0 if self.until is None else now < self.until

    def to_json(self) -> dict:
        out: dict[str, object] = {"method": self.method, "code": self.code, "where": self.where}
        if self.until is not None:
            out["seconds_left"] = max(0.0, round(self.until - time.time(), 3))
        else:
            out["count"] = self.count
        return out


def new_security_group_id() -> str:
    return "enp" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(17))


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def new_id() -> str:
    return "fhm" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(17))


def validate_name(name: str) -> None:
    if not NAME_RE.fullmatch(name):
        raise ApiError(
            "INVALID_ARGUMENT",
            f"Illegal argument name: {name!r} must match [a-z]([-_a-z0-9]{{0,61}}[a-z0-9])?",
        )


def validate_labels(labels: dict[str, str]) -> None:
    if len(labels) > MAX_LABELS:
        raise ApiError("INVALID_ARGUMENT", f"Illegal argument labels: at most {MAX_LABELS} labels")
    for key, value in labels.items():
        if not LABEL_KEY_RE.fullmatch(key):
            raise ApiError("INVALID_ARGUMENT", f"Illegal argument labels: bad key {key!r}")
        if not LABEL_VALUE_RE.fullmatch(value):
            raise ApiError("INVALID_ARGUMENT", f"Illegal argument labels: bad value for {key!r}")


def parse_fault(raw: dict, known_codes: Iterable[str]) -> Fault:
    """Validate one admin fault description (raises ValueError with a message for the operator)."""
    method, code, where = raw.get("method"), raw.get("code"), raw.get("where", "rpc")
    if method not in FAULT_METHODS:
        raise ValueError(f"method must be one of {sorted(FAULT_METHODS)}")
    if code not in set(known_codes) or code == "OK":
        raise ValueError("code must be a gRPC status code name, e.g. UNAVAILABLE")
    if where not in ("rpc", "operation"):
        raise ValueError("where must be rpc or operation")
    if where == "operation" and method not in OPERATION_FAULT_METHODS:
        raise ValueError("only Create and Delete have operations to fail")
    count, seconds = raw.get("count"), raw.get("seconds")
    if (count is None) == (seconds is None):
        raise ValueError("give exactly one of count or seconds")
    if seconds is not None:
        if where != "rpc" or not isinstance(seconds, int | float) or seconds <= 0:
            raise ValueError("seconds must be a positive number, with where=rpc")
        return Fault(method, code, where, until=time.time() + seconds)
    if not isinstance(count, int) or count <= 0:
        raise ValueError("count must be a positive integer")
    return Fault(method, code, where, count=count)
