"""Instance lifecycle (docs/ARCHITECTURE.md#lifecycle): statuses and the moves between them."""

from enum import StrEnum

from shared.domain.errors import IllegalTransition


class Status(StrEnum):
    PENDING = "pending"
    PROVISIONING = "provisioning"
    INITIALIZING = "initializing"
    READY = "ready"
    TEARING_DOWN = "tearing_down"
    RETIRED = "retired"
    FAILED = "failed"
    LOST = "lost"


# Teardown is allowed from every state but `retired`; `failed` and `lost` can still hold a VM
# (or a row an operator wants to close), so they are not terminal for teardown.
ALLOWED: dict[Status, frozenset[Status]] = {
    Status.PENDING: frozenset({Status.PROVISIONING, Status.FAILED, Status.TEARING_DOWN}),
    Status.PROVISIONING: frozenset({Status.INITIALIZING, Status.FAILED, Status.TEARING_DOWN}),
    Status.INITIALIZING: frozenset({Status.READY, Status.FAILED, Status.TEARING_DOWN}),
    Status.READY: frozenset({Status.TEARING_DOWN, Status.LOST}),
    Status.FAILED: frozenset({Status.TEARING_DOWN}),
    Status.LOST: frozenset({Status.TEARING_DOWN}),
    Status.TEARING_DOWN: frozenset({Status.RETIRED}),
    Status.RETIRED: frozenset(),
}

IN_FLIGHT = frozenset({Status.PENDING, Status.PROVISIONING, Status.INITIALIZING})
# Statuses whose instance counts against the tenant: it has (or is getting) a VM.
LIVE = IN_FLIGHT | {Status.READY}
TERMINAL = frozenset({Status.RETIRED})
# Statuses whose VM the guest's self-repair (heal) may be asked of, when it has an address: it helps
# most while init is stuck, after a failure that left the VM, and on a lost VM that still answers.
HEALABLE = frozenset({Status.INITIALIZING, Status.READY, Status.FAILED, Status.LOST})


def can_heal(current: Status, address: str | None) -> bool:
    return Status(current) in HEALABLE and bool(address)


def can_transition(current: Status, target: Status) -> bool:
    return target in ALLOWED[Status(current)]


def check_transition(current: Status, target: Status) -> None:
    if not can_transition(current, target):
        raise IllegalTransition(
            f"an instance cannot move from {Status(current).value} to {Status(target).value}",
            current=str(current),
            target=str(target),
        )


def can_tear_down(current: Status) -> bool:
    return Status(current) not in TERMINAL and Status(current) is not Status.TEARING_DOWN
