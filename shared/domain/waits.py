"""What the pipeline learns about its waits (docs/ARCHITECTURE.md#waits): how long recent cloud
creates and guest boots took, as seen by its own polls."""

from dataclasses import dataclass
from enum import StrEnum


class WaitKind(StrEnum):
    """A wait the pipeline polls through, timed from the row entering the status it waits in."""

    CREATE = "create"  # provisioning: the create operation is done
    BOOT = "boot"  # initializing: the guest answers /health


@dataclass(frozen=True)
class WaitSample:
    """One finished wait, bracketed by two polls: not done at `not_done_at` seconds, done at
    `done_at` seconds (both since the row entered the status). The true finish lies in between."""

    not_done_at: float
    done_at: float

    def __post_init__(self) -> None:
        if not 0 <= self.not_done_at <= self.done_at:
            raise ValueError("a wait sample needs 0 <= not_done_at <= done_at")
