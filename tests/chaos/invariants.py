"""The invariants the control plane promises (docs/RELIABILITY.md), checked from the outside
after a round has converged.

Each check returns a list of violations, each a line with what a person needs to debug it: the
instance, its tenant, and what is wrong.
"""

from collections import defaultdict

import psycopg

from shared.adapters.capacity import IN_USE, STATUS_PARAMS
from shared.domain.lifecycle import ALLOWED, Status
from tests.chaos.driver import Answer
from tests.chaos.observe import ORPHAN_GRACE_SECS, Snapshot, age_secs


def _who(row: dict) -> str:
    return f"instance {row['id']} (tenant {row['tenant']})"


def event_chains(rows: list[dict], events: dict[str, list[dict] | None]) -> list[str]:
    """Moves only along the lifecycle's arrows (docs/ARCHITECTURE.md#lifecycle), each from where the
    last one ended, nothing after `retired`, and the timeline ends where the row is (notes have from
    == to)."""
    found = []
    for row in rows:
        timeline = events.get(row["id"])
        if timeline is None:
            found.append(f"{_who(row)}: the gateway did not return its events")
            continue
        where, retired = None, False
        for n, event in enumerate(timeline):
            move = f"event {n} {event['from']} -> {event['to']} ({event.get('reason')!r})"
            if retired:
                found.append(f"{_who(row)}: {move} after retired")
            if n == 0:
                if event["from"] is not None or event["to"] != "pending":
                    found.append(f"{_who(row)}: timeline starts with {move}")
            elif event["from"] != where:
                found.append(f"{_who(row)}: {move}, but the row was {where}")
            elif (
                event["from"] != event["to"]
                and Status(event["to"]) not in ALLOWED[Status(event["from"])]
            ):
                found.append(f"{_who(row)}: illegal {move}")
            where = event["to"]
            retired = retired or where == "retired"
        if where != row["status"]:
            found.append(f"{_who(row)}: timeline ends at {where}, the row is {row['status']}")
    return found


def final_statuses(snap: Snapshot, teardowns: set[str], asked: set[str]) -> list[str]:
    """An accepted teardown ends `retired` with its VM gone; every other row is `ready` or
    `failed` with a human reason (nothing in this scenario removes a VM behind our back, so a
    `lost` row is a bug too); a row nobody asked to tear down is never retired."""
    found = []
    for row in snap.rows:
        status, vms = row["status"], snap.vms_of(row)
        if row["id"] in teardowns:
            if status != "retired":
                found.append(f"{_who(row)}: teardown accepted but the row is {status}")
            if vms:
                found.append(f"{_who(row)}: teardown accepted but its VM remains: {vms}")
        elif status == "retired" and row["id"] not in asked:
            found.append(f"{_who(row)}: retired without anyone asking for a teardown")
        elif status == "failed":
            if not _human(row["reason"]):
                found.append(f"{_who(row)}: failed without a human reason: {row['reason']!r}")
            if vms:
                found.append(f"{_who(row)}: failed but its VM remains: {vms}")
        elif status not in ("ready", "retired"):
            found.append(f"{_who(row)}: ended {status} ({row['reason']!r})")
    return found


def _human(reason: str | None) -> bool:
    return bool(reason and reason.strip()) and "Traceback" not in reason and len(reason) < 500


def one_vm_per_live_row(snap: Snapshot) -> list[str]:
    found = []
    for row in snap.rows:
        if row["status"] != "ready":
            continue
        vms = [vm for vm in snap.vms_of(row) if vm["status"] != "DELETING"]
        if len(vms) != 1:
            found.append(f"{_who(row)}: ready with {len(vms)} VMs: {vms}")
        elif row["provider_id"] != vms[0]["id"]:
            found.append(f"{_who(row)}: provider id {row['provider_id']}, its VM is {vms[0]}")
    return found


def no_orphans(snap: Snapshot) -> list[str]:
    return [
        f"orphan VM {vm['id']} {vm['name']}: no open row, {int(age_secs(vm['created_at']))} s old"
        for vm in snap.orphans()
        if age_secs(vm["created_at"]) > ORPHAN_GRACE_SECS
    ]


def one_identity_per_tenant(snap: Snapshot, guest_identity) -> list[str]:
    """At most one successful *init* per tenant, ever; one ssh_pubkey across a tenant's rows; and
    each ready guest holds that identity. `guest_identity(vm_id)` is the guest's pubkey."""
    tenant_of_vm = {row["provider_id"]: row["tenant"] for row in snap.rows if row["provider_id"]}
    tenant_of_name = {row["vm_name"]: row["tenant"] for row in snap.rows}
    inits: dict[str, list[str]] = defaultdict(list)
    for vm_id, calls in snap.guest_calls.items():
        tenant = tenant_of_vm.get(vm_id) or tenant_of_name.get(snap.vm_names.get(vm_id, ""))
        if tenant is None:
            continue
        done = [c for c in calls if c["method"] == "init" and c["status"] == 200]
        inits[tenant] += [f"{vm_id}@{c['at']}" for c in done]
    found = [f"tenant {t}: {len(v)} inits: {v}" for t, v in sorted(inits.items()) if len(v) > 1]
    keys: dict[str, set[str]] = defaultdict(set)
    for row in snap.rows:
        if row["ssh_pubkey"]:
            keys[row["tenant"]].add(row["ssh_pubkey"])
    found += [f"tenant {t}: {len(k)} ssh_pubkeys" for t, k in sorted(keys.items()) if len(k) > 1]
    for row in snap.rows:
        if row["status"] == "ready" and row["provider_id"]:
            held = guest_identity(row["provider_id"])
            if held != row["ssh_pubkey"]:
                found.append(
                    f"{_who(row)}: the guest holds {held!r}, the row {row['ssh_pubkey']!r}"
                )
    return found


def http_answers(answers: list[Answer]) -> list[str]:
    """No 5xx but 503 with Retry-After; no request left without an HTTP answer."""
    found = []
    for a in answers:
        if a.status == 0:
            found.append(f"{a.method} {a.path}: no HTTP answer ({a.body})")
        elif a.status >= 500 and not (a.status == 503 and a.retry_after):
            found.append(f"{a.method} {a.path}: {a.status} {a.body[:200]!r}")
    return found


def budget_released(database_url: str, idle: bool) -> list[str]:
    """When the fleet is idle (no row pending, provisioning or tearing down), no slot of the cloud
    operation budget is in use: none leaked by a SIGKILLed worker or lost with a Redis restart.
    Counted the way an acquisition counts them (shared/adapters/capacity.py)."""
    if not idle:
        return []
    with psycopg.connect(database_url, connect_timeout=5) as conn:
        row = conn.execute(IN_USE, STATUS_PARAMS).fetchone()
        # Stricter than the count: every path to ready or retired releases its slot itself; only
        # a row failed behind the pipeline's back (reconcile) leaves one for the reclaim rule.
        unreleased = conn.execute(
            "SELECT s.instance_id, i.status FROM cloud_operation_slots s"
            " JOIN instances i ON i.id = s.instance_id WHERE i.status IN ('ready', 'retired')"
        ).fetchall()
    in_use = row[0] if row else 0
    found = [f"{in_use} slot(s) of the cloud operation budget in use while the fleet is idle"]
    return (found if in_use else []) + [
        f"instance {instance_id} is {status} but never released its budget slot"
        for instance_id, status in unreleased
    ]
