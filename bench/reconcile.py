"""Reconcile scaling: one pass over 10,000 VMs + 10,000 rows, and over 100,000 + 100,000 (`--small`,
`--large`).

Real peers: the YC simulator through YcCompute (gRPC/TLS, the real SDK, pages of 1000), the
Postgres registry, run record and locks. The rows are in every state and mostly own a VM (by
provider id or only by name); some VMs have no row and some ready rows have lost their VM, so each
pass decides every kind of action. The pass is a dry run: it decides and records everything and
changes nothing, so repeated passes measure the same work. A linear pass gives a ratio near 10.
The printed breakdown times the two reads alone. The first pass of each size also pays for the
simulator serializing every VM once (it keeps each VM's list entry until the VM changes, as YC's
own speed is not ours to measure); the best of the passes does not.

    .venv/bin/python -m bench.reconcile --small 10000 --large 100000 --repeat 3
"""

import argparse
import io
import os
import platform
import secrets
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg

from shared.adapters.db import make_pool, migrate
from shared.adapters.locks import PostgresLocks
from shared.adapters.registry import PostgresFleetRegistry
from shared.adapters.runs import PostgresReconcileRuns
from shared.adapters.yc import YcCompute
from shared.domain.labels import managed_labels
from shared.domain.lifecycle import Status
from shared.domain.records import Instance
from shared.service_layer.fleet import FleetService
from shared.service_layer.reconcile import OPEN_STATUSES, reconcile_once
from shared.settings import load_settings
from tests.support.processes import start_simulator

PG_ADMIN = os.environ.get("TEST_PG_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
STATUSES = [
    Status.READY,
    Status.READY,
    Status.READY,
    Status.READY,
    Status.RETIRED,
    Status.RETIRED,
    Status.FAILED,
    Status.LOST,
    Status.TEARING_DOWN,
    Status.PENDING,
    Status.PROVISIONING,
    Status.INITIALIZING,
]
POPULATE_CHUNK = 10_000


class _NoDispatch:
    """The TaskDispatcher port for a dry run, which sends nothing."""

    def send(
        self,
        instance: Instance,
        token: uuid.UUID,
        *,
        request_id: str | None,
        countdown: float = 0,
        task_id: str | None = None,
    ) -> str:
        raise AssertionError("a dry run sends no message")


class Fleet:
    """`size` VMs in a folder of their own and `size` rows (mixed states) in a database of its own:
    the registry is global, so each size needs its own for the passes to alternate."""

    def __init__(self, sim, size: int) -> None:
        self.sim, self.size = sim, size
        self.db_name = f"dark_bench_{secrets.token_hex(4)}"
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.db_name}"')
        db_url = f"{PG_ADMIN.rsplit('/', 1)[0]}/{self.db_name}"
        migrate(db_url)
        self.pool = make_pool(db_url, max_size=4)
        self.folder = f"bench-{secrets.token_hex(4)}"
        deployment = f"bench-{secrets.token_hex(3)}"
        self.settings = load_settings(
            {
                **sim.yc_env(),
                "YC_FOLDER_ID": self.folder,
                "DARK_DEPLOYMENT": deployment,
                "RECONCILE_RESPAWN_LOST": "true",
            }
        )
        self._populate()
        self.compute = YcCompute.from_settings(self.settings)
        self.compute.warm()
        self.registry = PostgresFleetRegistry(self.pool)
        self.times: dict[str, list[float]] = {"pass": [], "listing": [], "rows": []}
        self.counts: dict = {}

    def _populate(self) -> None:
        # In chunks: one admin request for 100k VMs can outlast the client's timeout on a busy
        # machine.
        prefix = f"b{secrets.token_hex(3)}-"
        vms: list[dict] = []
        for first in range(0, self.size, POPULATE_CHUNK):
            vms += self.sim.admin(
                "POST",
                "/cloud/vms",
                json={
                    "folder_id": self.folder,
                    "count": min(POPULATE_CHUNK, self.size - first),
                    "name_prefix": f"{prefix}{first // POPULATE_CHUNK}-",
                    "labels": managed_labels(self.settings.deployment),
                    "age_secs": 7200,
                    "guest": False,
                },
            )
        now = datetime.now(UTC)
        buf = io.StringIO()
        for i, vm in enumerate(vms):
            status = STATUSES[i % len(STATUSES)]
            # One row in 25 names no VM: its VM has no row, and the row (if ready) lost its VM.
            owns_vm = i % 25 != 3
            name = vm["name"] if owns_vm else f"gone-{vm['name']}"
            # Half the owners are found by provider id, the others only by name.
            provider_id = vm["id"] if owns_vm and i % 2 == 0 else r"\N"
            since = (now - timedelta(seconds=(i % 5) * 1000)).isoformat()
            row = [uuid.uuid4(), f"tenant-{i % 500}", status.value, name, uuid.uuid4()]
            buf.write("\t".join(map(str, [*row, provider_id, since, since, since])) + "\n")
        with self.pool.connection() as conn:
            with conn.cursor().copy(
                "COPY instances (id, tenant, status, vm_name, idempotency_key, provider_id,"
                " created_at, updated_at, status_changed_at) FROM STDIN"
            ) as copy:
                copy.write(buf.getvalue())
            conn.execute("ANALYZE instances")

    def measure(self) -> None:
        """One full pass, then its two reads alone (for the breakdown)."""
        start = time.perf_counter()
        summary = reconcile_once(
            self.registry,
            self.compute,
            PostgresReconcileRuns(self.pool),
            PostgresLocks(self.pool),
            self.settings,
            now=datetime.now(UTC),
            dry_run=True,
            trigger="bench",
            # A dry run sends nothing: a fleet whose dispatcher refuses to.
            fleet=FleetService(
                self.registry,
                _NoDispatch(),
                max_instances_per_tenant=self.settings.max_instances_per_tenant,
            ),
        )
        self.times["pass"].append(time.perf_counter() - start)
        assert summary is not None  # a dry run in a quiet bench is never refused
        self.counts = summary.counts
        start = time.perf_counter()
        sum(1 for _ in self.compute.list_managed(managed_labels(self.settings.deployment)))
        self.times["listing"].append(time.perf_counter() - start)
        start = time.perf_counter()
        self.registry.list_by_statuses(OPEN_STATUSES)
        self.times["rows"].append(time.perf_counter() - start)

    def best(self, what: str) -> float:
        return min(self.times[what])

    def close(self) -> None:
        self.pool.close()
        self.sim.admin("DELETE", f"/cloud/vms?folder_id={self.folder}")
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.db_name}" WITH (FORCE)')


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--small", type=int, default=10_000)
    parser.add_argument("--large", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5, help="passes per size; the best counts")
    args = parser.parse_args()

    sim = start_simulator(Path(tempfile.mkdtemp(prefix="dark-bench-")))
    fleets: list[Fleet] = []
    try:
        for size in (args.small, args.large):
            fleets.append(Fleet(sim, size))
        # Alternating, so that load from elsewhere on the machine falls on both sizes alike.
        for _ in range(args.repeat):
            for fleet in fleets:
                fleet.measure()
    finally:
        for fleet in fleets:
            fleet.close()
        sim.stop()

    small, large = fleets
    python = platform.python_version()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {python}")
    print(f"one dry-run reconcile pass, best of {args.repeat}:")
    for fleet in fleets:
        print(
            f"  {fleet.size:>6} VMs + {fleet.size:>6} rows: {fleet.best('pass'):6.2f} s"
            f"   (listing alone {fleet.best('listing'):.2f} s,"
            f" row query alone {fleet.best('rows'):.2f} s)"
        )
    print(f"  actions decided at {large.size}: {large.counts}")
    ratio = large.best("pass") / small.best("pass")
    print(f"ratio: {ratio:.1f}   (sizes differ {large.size / small.size:.0f}x; linear ≈ that)")


if __name__ == "__main__":
    main()
