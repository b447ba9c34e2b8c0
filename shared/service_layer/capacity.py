"""Waiting for the cloud operation budget (docs/ARCHITECTURE.md#capacity), as the pipeline does it.

A row that asks for a slot and gets none keeps its place (the budget's queue is the pending rows,
oldest first) and comes back later with a fresh token: the wait is a `Step` with a delay, never a
sleeping worker. How much later depends on its place: the rows next in line ask often, so that a
freed slot is taken within a fraction of a second; a row N rounds of operations back asks about N
times less often, so that a queue of hundreds costs the workers and Postgres little.

With a hand-over (the pipeline has a dispatcher), the chain that frees a slot wakes the next in
line at once, and a waiter's own asks are only the backstop for a slot freed where no chain saw
it (a dead holder's slot reclaimed, a wake message lost): they start at HANDED_OVER_POLL_SECS, so
that hundreds of waiters do not keep the workers busy asking.
"""

import uuid

from shared.domain.capacity import Admission, Mutation
from shared.ports import OperationBudget

# How often the rows that will get the next free slots ask again.
NEXT_IN_LINE_POLL_SECS = 0.5
# The same, when a freed slot is handed over to the next in line by the chain that freed it.
HANDED_OVER_POLL_SECS = 5.0
# The longest wait between two asks, however far back a row is.
MAX_CAPACITY_POLL_SECS = 10.0
MAX_HANDED_OVER_POLL_SECS = 30.0


def poll_delay(admission: Admission, budget: int, *, handed_over: bool = False) -> float:
    """Seconds until a row that was refused a slot asks again."""
    rounds_back = admission.ahead // max(1, budget)
    if handed_over:
        return min(MAX_HANDED_OVER_POLL_SECS, HANDED_OVER_POLL_SECS * (1 + rounds_back))
    return min(MAX_CAPACITY_POLL_SECS, NEXT_IN_LINE_POLL_SECS * (1 + rounds_back))


def admit(
    budget: OperationBudget,
    size: int,
    instance_id: uuid.UUID,
    kind: Mutation,
    *,
    handed_over: bool = False,
) -> float | None:
    """None when the instance holds a slot for `kind` now; otherwise the delay before it asks
    again."""
    admission = budget.acquire(instance_id, kind)
    return None if admission.granted else poll_delay(admission, size, handed_over=handed_over)
