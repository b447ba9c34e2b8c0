"""A burst of provisions against the folder's concurrent-operations quota (issue 12's acceptance).

The simulator enforces YC's quota of QUOTA operations in flight per folder and counts every
RESOURCE_EXHAUSTED it answers; the control plane runs with YC_MAX_CONCURRENT_OPERATIONS=QUOTA on two
worker nodes of concurrency 2. The ideal is what the quota allows at best: ceil(N / QUOTA) rounds of
one operation each, then one boot. The ratio (total time / ideal) shows what the budget's queue
costs on top of the cloud's own time; 0 failed rows and 0 RESOURCE_EXHAUSTED show it never rode a
retry storm.

    .venv/bin/python -m bench.capacity --n 300     # make bench
"""

import argparse
import math
import secrets
import statistics
import time

import psycopg
from celery import Celery

from bench.support import bench_stack, machine_line
from tests.support.processes import wait_until


def _counts(db_url: str) -> dict[str, int]:
    with psycopg.connect(db_url) as conn:
        return dict(
            conn.execute("SELECT status, count(*) FROM instances GROUP BY status").fetchall()
        )


def _slots(db_url: str) -> int:
    with psycopg.connect(db_url) as conn:
        row = conn.execute("SELECT count(*) FROM cloud_operation_slots").fetchone()
    return row[0] if row else 0


def _timeline(db_url: str, quota: int) -> dict[str, float]:
    """Where the time goes, from the events: mean seconds per phase, and the mean hand-over gap
    (a slot's idle time: from a create seen done, the row going to initializing, to the start of
    the create that took its slot, `quota` starts later)."""
    with psycopg.connect(db_url) as conn:
        rows = conn.execute(
            "SELECT i.created_at,"
            " min(e.at) FILTER (WHERE e.to_status = 'provisioning'),"
            " min(e.at) FILTER (WHERE e.to_status = 'initializing'),"
            " min(e.at) FILTER (WHERE e.to_status = 'ready')"
            " FROM instances i JOIN instance_events e ON e.instance_id = i.id"
            " WHERE i.status = 'ready' AND i.tenant LIKE 'cap-%%' GROUP BY i.id"
        ).fetchall()
    if not rows:
        return {}
    starts = sorted(r[1] for r in rows)
    done = sorted(r[2] for r in rows)
    gaps = [(starts[k + quota] - done[k]).total_seconds() for k in range(len(rows) - quota)] or [
        0.0
    ]
    worst_round = max(statistics.mean(gaps[i : i + quota]) for i in range(0, len(gaps), quota))

    def mean(i: int, j: int) -> float:
        return statistics.mean((r[j] - r[i]).total_seconds() for r in rows)

    return {
        "waiting in line": mean(0, 1),
        "provisioning (create)": mean(1, 2),
        "initializing (boot, hand-over)": mean(2, 3),
        "slot hand-over gap": statistics.mean(gaps),
        "slot hand-over gap, worst round": worst_round,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=300, help="provisions in the burst")
    parser.add_argument("--quota", type=int, default=15, help="concurrent operations per folder")
    parser.add_argument("--operation", type=float, default=5.0, help="simulated create (s)")
    parser.add_argument("--boot", type=float, default=2.0, help="simulated guest boot (s)")
    args = parser.parse_args()

    sim_args = ["--operation-delay", str(args.operation), "--boot-delay", str(args.boot)]
    with bench_stack(
        [*sim_args, "--quota-operations", str(args.quota)],
        YC_MAX_CONCURRENT_OPERATIONS=str(args.quota),
    ) as bench:
        stack, sim, db_url, redis_url = bench.stack, bench.sim, bench.db_url, bench.redis_url
        stack.start_worker("node-a", concurrency=2)
        stack.start_worker("node-b", concurrency=2)
        tenants = [f"cap-{i}-{secrets.token_hex(3)}" for i in range(args.n)]
        for tenant in tenants:
            stack.onboard(tenant)
        # The clock starts with both nodes up and warm (a deployment's workers are running
        # already, and have seen creates before): not the workers' start-up.
        control = Celery(broker=redis_url).control
        wait_until(lambda: len(control.ping(timeout=0.5)) == 2, 120, what="both nodes up")
        warm = f"warm-{secrets.token_hex(3)}"
        stack.onboard(warm)
        stack.wait_status(warm, stack.provision(warm)["id"], {"ready"}, timeout=120)
        sim.admin("POST", "/reset")  # counters from zero; quotas are configuration and stay
        start = time.monotonic()
        for tenant in tenants:
            stack.provision(tenant)
        sent = time.monotonic() - start

        def settled():
            counts = _counts(db_url)
            settled = counts.get("ready", 0) - 1 + counts.get("failed", 0)  # less the warm-up
            return counts if settled == args.n else None

        counts = wait_until(settled, 60 + 10 * args.n, interval=0.2, what="every row settled")
        total = time.monotonic() - start
        quotas = sim.admin("GET", "/cloud/quotas")
        left = _slots(db_url)
        phases = _timeline(db_url, args.quota)
    ideal = math.ceil(args.n / args.quota) * args.operation + args.boot
    print(machine_line())
    print(
        f"burst of {args.n} provisions; simulator quota {args.quota} concurrent operations, "
        f"create {args.operation:.1f} s + boot {args.boot:.1f} s; two worker nodes, concurrency 2"
    )
    print(f"failed rows:                    {counts.get('failed', 0)}")
    print(f"RESOURCE_EXHAUSTED answered:    {quotas['resource_exhausted']}")
    print(f"most operations in flight:      {quotas['max_concurrent_operations']}")
    print(f"budget slots left when idle:    {left}")
    print(f"all POSTs answered after:       {sent:7.2f} s")
    print(f"total time:                     {total:7.2f} s")
    print(f"quota-bound ideal:              {ideal:7.2f} s   (ceil(N/quota) x create + boot)")
    print(f"ratio (total / ideal):          {total / ideal:7.2f}   (acceptance: <= 1.15 at N=300)")
    for phase, seconds in phases.items():
        print(f"mean {phase + ':':<32}{seconds:7.2f} s")


if __name__ == "__main__":
    main()
