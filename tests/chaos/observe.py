"""What the invariants look at, read from the outside: Postgres, the simulator's admin API, and
the gateway (through the recording client, so these reads are judged like every other answer)."""

import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import psycopg

from tests.chaos.driver import Driver
from tests.chaos.harness import SETTINGS, ChaosStack

SETTLED = {"ready", "failed", "retired", "lost"}
ORPHAN_GRACE_SECS = int(SETTINGS["RECONCILE_ORPHAN_GRACE_SECS"])
_ROWS = "SELECT id::text, tenant, status, vm_name, provider_id, reason, ssh_pubkey FROM instances"


@dataclass
class Snapshot:
    rows: list[dict]  # this round's instance rows
    open_rows: list[dict]  # every row of the stack that is not retired (any round)
    vms: list[dict]  # the folder's VMs in the simulator
    guest_calls: dict  # vm_id -> [{"method", "at", "status"}]
    vm_names: dict  # vm_id -> name, for every VM the simulator ever created

    def live_vms(self) -> list[dict]:
        return [vm for vm in self.vms if vm["status"] != "DELETING"]

    def vms_of(self, row: dict) -> list[dict]:
        return [
            vm
            for vm in self.vms
            if vm["name"] == row["vm_name"]
            or (row["provider_id"] and vm["id"] == row["provider_id"])
        ]

    def orphans(self) -> list[dict]:
        names = {row["vm_name"] for row in self.open_rows}
        ids = {row["provider_id"] for row in self.open_rows if row["provider_id"]}
        return [vm for vm in self.live_vms() if vm["name"] not in names and vm["id"] not in ids]


def snapshot(chaos: ChaosStack, tenants: list[str]) -> Snapshot:
    with psycopg.connect(chaos.database_url, connect_timeout=5) as conn:
        cur = conn.execute(_ROWS + " WHERE tenant = ANY(%s)", (tenants,))
        names = [c.name for c in cur.description]
        rows = [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
        cur = conn.execute(_ROWS + " WHERE status <> 'retired'")
        open_rows = [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
    sim = chaos.sim
    vms = sim.admin("GET", f"/cloud/vms?folder_id={chaos.folder_id}")
    calls = sim.admin("GET", "/guests/calls")["by_vm"]
    vm_names = {e["vm_id"]: e["name"] for e in sim.admin("GET", "/cloud/log") if e["vm_id"]}
    return Snapshot(rows, open_rows, vms, calls, vm_names)


def still_moving(snap: Snapshot, teardowns: set[str]) -> list[str]:
    """Why the round has not converged yet ([] when it has)."""
    moving = []
    for row in snap.rows:
        vms = [vm for vm in snap.vms_of(row)]
        if row["status"] not in SETTLED:
            moving.append(f"{row['id']} ({row['tenant']}) is {row['status']}")
        elif row["id"] in teardowns and row["status"] != "retired":
            moving.append(f"{row['id']} ({row['tenant']}): teardown accepted, is {row['status']}")
        elif row["status"] != "ready" and vms:
            moving.append(f"{row['id']} ({row['tenant']}) is {row['status']} with VM(s) {vms}")
    moving += [f"orphan VM {vm['id']} {vm['name']} created {vm['created_at']}"
               for vm in snap.orphans()]  # fmt: skip
    return moving


def wait_for_convergence(
    chaos: ChaosStack, tenants: list[str], teardowns: set[str], timeout: float, echo=print
) -> tuple[Snapshot, list[str]]:
    """Poll until nothing moves or `timeout` passes; the last snapshot and what still moved."""
    deadline = time.monotonic() + timeout
    last_report = 0.0
    while True:
        try:
            snap = snapshot(chaos, tenants)
        except (psycopg.Error, OSError) as exc:
            snap, moving = None, [f"cannot observe: {exc}"]
        else:
            moving = still_moving(snap, teardowns)
        if snap is not None and not moving:
            return snap, []
        if time.monotonic() > deadline:
            return snap or snapshot(chaos, tenants), moving
        if time.monotonic() - last_report > 15:
            echo(f"  waiting for convergence: {len(moving)} still moving, e.g. {moving[:2]}")
            last_report = time.monotonic()
        time.sleep(2)


def events_by_instance(driver: Driver, rows: list[dict]) -> dict[str, list[dict] | None]:
    """Each row's lifecycle timeline through the gateway (None when the gateway would not say)."""
    found = {}
    for n, row in enumerate(rows):
        path = f"/instances/{row['tenant']}/{row['id']}/events"
        answer = driver.request("GET", path, gateway=n)
        found[row["id"]] = json.loads(answer.body)["items"] if answer.status == 200 else None
    return found


def age_secs(created_at: str) -> float:
    created = datetime.fromisoformat(created_at.replace("Z", "+00:00"))
    return (datetime.now(UTC) - created).total_seconds()
