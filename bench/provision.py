"""Provisioning throughput: one VM alone vs N at once, through the real gateway and worker.

Everything is real processes (gunicorn gateway, a Celery prefork worker with concurrency 2,
Redis, Postgres, OpenBao, the simulators with a VM boot of a few seconds). Waiting steps schedule a
re-check instead of sleeping, so N VMs in flight should cost little more than one: the ratio
(time for N) / (time for one) stays far below N / concurrency.

It measures the pipeline, not the cloud's quota: the simulator's concurrent-operations quota is off
and the operation budget (YC_MAX_CONCURRENT_OPERATIONS) is N, as in a folder whose quota was
raised. With YC's default of 15, N = 50 creates go in four waves whatever the pipeline does;
bench/capacity.py measures that case against its quota-bound ideal.

    make bench            # or: .venv/bin/python -m bench.provision --n 50
"""

import argparse
import secrets
import time

from bench.support import bench_stack, machine_line
from tests.support.processes import wait_until


def _provision_and_wait(stack, tenants: list[str]) -> float:
    start = time.monotonic()
    ids = {stack.provision(t)["id"] for t in tenants}

    def all_ready():
        items = stack.api("GET", "/instances?limit=200").json()["items"]
        status = {i["id"]: i["status"] for i in items if i["id"] in ids}
        bad = [s for s in status.values() if s == "failed"]
        if bad:
            raise SystemExit(f"a provision failed: {status}")
        return len(status) == len(ids) and all(s == "ready" for s in status.values())

    wait_until(all_ready, 600, interval=0.1, what="all VMs ready")
    return time.monotonic() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=50)
    parser.add_argument("--boot", type=float, default=3.0, help="simulated VM boot (s)")
    args = parser.parse_args()

    with bench_stack(
        [
            *("--operation-delay", str(args.boot / 2), "--boot-delay", str(args.boot / 2)),
            *("--quota-operations", "0"),
        ],
        YC_MAX_CONCURRENT_OPERATIONS=str(args.n),
    ) as bench:
        stack = bench.stack
        stack.start_worker(concurrency=2)
        tenants = [f"bench-{i}-{secrets.token_hex(3)}" for i in range(args.n + 2)]
        for t in tenants:
            stack.onboard(t)
        _provision_and_wait(stack, tenants[:1])  # warm-up: imports, connections, SDK discovery
        single = _provision_and_wait(stack, tenants[1:2])
        many = _provision_and_wait(stack, tenants[2:])
    print(machine_line())
    print(
        f"simulated VM create+boot: {args.boot:.1f} s; worker: prefork, concurrency 2;"
        f" no operations quota, budget {args.n}"
    )
    print(f"single VM provision:          {single:7.2f} s")
    print(f"{args.n} simultaneous provisions: {many:7.2f} s")
    print(
        f"ratio (N / single):           {many / single:7.2f}   (N/concurrency would be "
        f"{args.n / 2:.0f})"
    )


if __name__ == "__main__":
    main()
