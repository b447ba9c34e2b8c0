"""PostgresOperationBudget: the cloud operation budget (docs/ARCHITECTURE.md#capacity) as rows.

Why Postgres rows keyed by instance, and not Redis keys with a TTL: a slot belongs to the work, not
to the worker. The pipeline's state (the row, its operation id, its token) is already in Postgres,
and whichever worker resumes an instance after its holder died carries on with the same slot, so
no slot needs a heartbeat or an expiry that a slow worker (a GC pause, a loaded host) could
outlive, and a Redis restart loses nothing. The budget is as durable as the registry it guards.

The rules, all applied in one transaction under a transaction-level advisory lock (one acquisition
at a time, across every process and host; nothing is left on the pooled connection):
- A slot is valid while its instance is in a status that may still use it (HOLDING_STATUSES:
  pending/provisioning for a create, tearing_down for a delete). Every acquisition first deletes
  the slots that are not: an instance that went ready, failed (reconcile's stuck rule, a failed
  create), retired, or was withdrawn (ON DELETE CASCADE) frees its slot even if the worker that
  should have released it was SIGKILLed. `usage` counts only valid slots, so a stale row is never
  reported as in use.
- Release happens when the pipeline sees the operation done (create), or the VM gone (delete).
  The releasing chain then wakes `next_in_line` (the oldest waiters, as many as slots are free)
  at once, instead of leaving the slot idle until their next ask.
- Oldest first: a create is granted only if the slots in use plus the pending rows older than it
  that hold no slot stay under the budget. Each older waiter keeps a place ahead of it, so a newer
  row can never take the slot an older one is waiting for, whichever polls first.
- A delete needs only a free slot: it jumps the create queue, so a backlog of creates never starves
  teardowns.

The races, and what closes each:
- Two workers asking for the last slot at once: the advisory lock serialises them; the second one
  counts the first one's slot.
- A worker killed after acquiring, before the create RPC: the slot stays with the instance (pending
  or provisioning); the resumed chain asks again and is granted the slot it already holds.
- A worker killed after the RPC, before seeing the operation done: the resumed chain polls the
  operation and releases; if no chain ever resumes, reconcile fails the stuck row and the status
  rule frees the slot.
- A teardown accepted while a create holds a slot: the row moves to tearing_down, so the create
  slot stops being valid; the teardown's delete asks for a slot of its own.
- A release racing an acquisition: a release is a single-row delete; at worst the acquisition
  counted the slot one moment too long and the row waits one more poll.

No deadlock: a slot holder never waits for another slot or row, only for its own operation, which
the cloud finishes on its own.
"""

import uuid

from psycopg_pool import ConnectionPool

from shared.adapters.db import pooled_cursor
from shared.domain.capacity import HOLDING_STATUSES, Admission, BudgetUsage, Mutation

_UNAVAILABLE = "the registry database is unreachable (cloud operation budget)"
# One acquisition at a time; the lock goes with the transaction.
_SERIALISE = "SELECT pg_advisory_xact_lock(hashtextextended('dark:cloud-operation-budget', 0))"
# A slot is valid while its instance is in a status that may still use it (HOLDING_STATUSES).
_RECLAIM = (
    "DELETE FROM cloud_operation_slots s WHERE NOT EXISTS ("
    " SELECT 1 FROM instances i WHERE i.id = s.instance_id AND i.status = ANY("
    " CASE s.kind WHEN 'create' THEN %(create_statuses)s::text[]"
    " ELSE %(delete_statuses)s::text[] END))"
)
IN_USE = (
    "SELECT count(*) AS n FROM cloud_operation_slots s WHERE EXISTS ("
    " SELECT 1 FROM instances i WHERE i.id = s.instance_id AND i.status = ANY("
    " CASE s.kind WHEN 'create' THEN %(create_statuses)s::text[]"
    " ELSE %(delete_statuses)s::text[] END))"
)
QUEUE = (
    "SELECT count(*) AS n FROM instances i WHERE i.status = 'pending'"
    " AND NOT EXISTS (SELECT 1 FROM cloud_operation_slots s WHERE s.instance_id = i.id)"
)
# The oldest waiters, as many as the valid slots leave free (the same rows, in the same order, that
# acquisitions would grant next).
_NEXT_IN_LINE = (
    "SELECT i.id FROM instances i WHERE i.status = 'pending'"
    " AND NOT EXISTS (SELECT 1 FROM cloud_operation_slots s WHERE s.instance_id = i.id)"
    " ORDER BY i.created_at, i.id"
    " LIMIT greatest(0, %(budget)s - (SELECT count(*) FROM cloud_operation_slots s WHERE EXISTS ("
    " SELECT 1 FROM instances i WHERE i.id = s.instance_id AND i.status = ANY("
    " CASE s.kind WHEN 'create' THEN %(create_statuses)s::text[]"
    " ELSE %(delete_statuses)s::text[] END))))"
)
_AHEAD = (
    "SELECT count(*) AS n FROM instances i WHERE i.status = 'pending'"
    " AND NOT EXISTS (SELECT 1 FROM cloud_operation_slots s WHERE s.instance_id = i.id)"
    " AND (i.created_at, i.id) < (SELECT created_at, id FROM instances WHERE id = %(id)s)"
)


def _statuses(kind: Mutation) -> list[str]:
    return sorted(status.value for status in HOLDING_STATUSES[kind])


STATUS_PARAMS = {
    "create_statuses": _statuses(Mutation.CREATE),
    "delete_statuses": _statuses(Mutation.DELETE),
}


class PostgresOperationBudget:
    def __init__(self, pool: ConnectionPool, budget: int) -> None:
        self._pool = pool
        self.budget = budget

    def acquire(self, instance_id: uuid.UUID, kind: Mutation) -> Admission:
        with pooled_cursor(self._pool, _UNAVAILABLE) as cur:
            cur.execute(_SERIALISE)
            cur.execute(_RECLAIM, STATUS_PARAMS)
            held = cur.execute(
                "SELECT kind FROM cloud_operation_slots WHERE instance_id = %s", (instance_id,)
            ).fetchone()
            if held is not None:
                if held["kind"] != kind.value:
                    cur.execute(
                        "UPDATE cloud_operation_slots SET kind = %s WHERE instance_id = %s",
                        (kind.value, instance_id),
                    )
                return Admission(granted=True)
            row = cur.execute("SELECT count(*) AS n FROM cloud_operation_slots").fetchone()
            in_use = row["n"] if row else 0
            ahead = 0
            if kind is Mutation.CREATE:
                row = cur.execute(_AHEAD, {"id": instance_id}).fetchone()
                ahead = row["n"] if row else 0
            if in_use + ahead >= self.budget:
                return Admission(granted=False, ahead=ahead)
            cur.execute(
                "INSERT INTO cloud_operation_slots (instance_id, kind) VALUES (%s, %s)",
                (instance_id, kind.value),
            )
            return Admission(granted=True)

    def release(self, instance_id: uuid.UUID) -> bool:
        with pooled_cursor(self._pool, _UNAVAILABLE) as cur:
            cur.execute("DELETE FROM cloud_operation_slots WHERE instance_id = %s", (instance_id,))
            return cur.rowcount > 0

    def next_in_line(self) -> list[uuid.UUID]:
        with pooled_cursor(self._pool, _UNAVAILABLE) as cur:
            rows = cur.execute(_NEXT_IN_LINE, {**STATUS_PARAMS, "budget": self.budget}).fetchall()
        return [row["id"] for row in rows]

    def usage(self) -> BudgetUsage:
        with pooled_cursor(self._pool, _UNAVAILABLE) as cur:
            in_use = cur.execute(IN_USE, STATUS_PARAMS).fetchone()
            waiting = cur.execute(QUEUE).fetchone()
        return BudgetUsage(
            in_use=in_use["n"] if in_use else 0, waiting=waiting["n"] if waiting else 0
        )
