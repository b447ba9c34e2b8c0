"""Adaptive waits: one VM's provision time over the cloud's own time, and the polls it took.

Real processes (gunicorn gateway, a Celery prefork worker, Redis, Postgres, OpenBao, the simulator)
with a VM create of `--create` seconds and a guest boot of `--boot` more. VMs are provisioned one
at a time, first with the fixed poll intervals (DARK_ADAPTIVE_WAITS=false: every 1 s / 2 s), then
with the learned schedule, side by side in one run against the same simulator. The fixed run's
VMs are samples for the adaptive one (samples are recorded either way); the adaptive run's
warm-up VMs let the estimate close in before the measured ones.

Polls per VM are counted by the simulator: its cloud API's `OperationGet` and `Get` (the operation
and the instance reads) and its guests' /health answers.

    .venv/bin/python -m bench.waits            # make bench runs it with the defaults
"""

import argparse
import secrets
import statistics
import time
from dataclasses import dataclass

from bench.support import bench_stack, machine_line
from tests.support.processes import Simulator, wait_until
from tests.support.stack import Stack


@dataclass
class Run:
    seconds: list[float]
    gets: list[int]
    health: list[int]

    def line(self, name: str, cloud_time: float) -> str:
        mean = statistics.mean(self.seconds)
        return (
            f"{name:<9} {mean:7.2f} s  {mean / cloud_time:6.3f}  "
            f"{statistics.mean(self.gets):5.1f}  {statistics.mean(self.health):5.1f}   "
            f"(each VM: {', '.join(f'{s:.2f}' for s in self.seconds)} s)"
        )


def _counts(sim: Simulator) -> tuple[int, int]:
    cloud = sim.admin("GET", "/cloud/calls")
    gets = cloud.get("Get", 0) + cloud.get("OperationGet", 0)
    return gets, sim.admin("GET", "/guests/calls")["counts"]["health"]


def _one(stack: Stack, sim: Simulator, tenant: str) -> tuple[float, int, int]:
    gets0, health0 = _counts(sim)
    start = time.monotonic()
    instance_id = stack.provision(tenant)["id"]

    def ready() -> bool:
        # The list, not the instance's own page: that one asks the guest for its health.
        items = stack.api("GET", "/instances?limit=100").json()["items"]
        row = next(i for i in items if i["id"] == instance_id)
        if row["status"] == "failed":
            raise SystemExit(f"the provision failed: {row}")
        return bool(row["status"] == "ready")

    wait_until(ready, 120, interval=0.02, what="VM ready")
    took = time.monotonic() - start
    gets1, health1 = _counts(sim)
    return took, gets1 - gets0, health1 - health0


def _run(stack: Stack, sim: Simulator, adaptive: bool, warm: int, measured: int) -> Run:
    stack.env["DARK_ADAPTIVE_WAITS"] = "true" if adaptive else "false"
    stack.start_worker(concurrency=2)
    try:
        run = Run([], [], [])
        for i in range(warm + measured):
            tenant = f"waits-{secrets.token_hex(4)}"
            stack.onboard(tenant)
            took, gets, health = _one(stack, sim, tenant)
            if i >= warm:
                run.seconds.append(took)
                run.gets.append(gets)
                run.health.append(health)
        return run
    finally:
        stack.terminate("worker")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--create", type=float, default=5.0, help="simulated VM create (s)")
    parser.add_argument("--boot", type=float, default=5.0, help="simulated guest boot (s)")
    parser.add_argument("--vms", type=int, default=3, help="measured VMs per schedule")
    parser.add_argument("--warm", type=int, default=6, help="adaptive warm-up VMs")
    args = parser.parse_args()

    with bench_stack(
        ["--operation-delay", str(args.create), "--boot-delay", str(args.boot)]
    ) as bench:
        # The fixed schedule's first VM is the warm-up of the processes (imports, connections).
        fixed = _run(bench.stack, bench.sim, adaptive=False, warm=1, measured=args.vms)
        adaptive = _run(bench.stack, bench.sim, adaptive=True, warm=args.warm, measured=args.vms)
    cloud_time = args.create + args.boot
    print(machine_line())
    print(
        f"simulated VM create {args.create:.1f} s + guest boot {args.boot:.1f} s = "
        f"{cloud_time:.1f} s; one VM at a time, {args.vms} measured per schedule"
    )
    print("schedule  provision  ÷ cloud  Gets  health")
    print(fixed.line("fixed", cloud_time))
    print(adaptive.line("adaptive", cloud_time))


if __name__ == "__main__":
    main()
