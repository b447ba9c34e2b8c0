"""The cloud operation budget's vocabulary (docs/ARCHITECTURE.md#capacity): no I/O."""

from dataclasses import dataclass
from enum import StrEnum

from shared.domain.lifecycle import Status

# What a row waiting for a slot says, in its `reason` (and on the dashboard).
WAITING_REASON = "waiting for cloud capacity"


class Mutation(StrEnum):
    """A cloud call that starts an operation, counted against the folder's quota."""

    CREATE = "create"
    DELETE = "delete"


# The statuses in which an instance may still be using a slot of each kind. A slot whose instance
# is in none of them (it moved on: ready, failed, retired, …, or was withdrawn) is free again:
# that rule, not the holder's goodwill, is what reclaims a slot after a worker dies.
HOLDING_STATUSES: dict[Mutation, frozenset[Status]] = {
    Mutation.CREATE: frozenset({Status.PENDING, Status.PROVISIONING}),
    Mutation.DELETE: frozenset({Status.TEARING_DOWN}),
}


@dataclass(frozen=True)
class Admission:
    """The answer to asking for a slot: granted, or how many rows are ahead in the queue."""

    granted: bool
    ahead: int = 0


@dataclass(frozen=True)
class BudgetUsage:
    in_use: int  # slots held by instances that may still be using them
    waiting: int  # pending rows without a slot: the queue for cloud capacity
