"""Provisioning throughput: one VM alone vs N at once, through the real gateway and worker.

Everything is real processes (gunicorn gateway, a Celery prefork worker with concurrency 2,
Redis, Postgres, OpenBao, the simulators with a VM boot of a few seconds). Waiting steps schedule a
re-check instead of sleeping, so N VMs in flight should cost little more than one: the ratio
(time for N) / (time for one) stays far below N / concurrency.

    make bench            # or: .venv/bin/python -m bench.provision --n 50
"""

import argparse
import platform
import secrets
import tempfile
import time
from pathlib import Path

import psycopg
import redis

from tests.support.processes import start_openbao, start_simulator, wait_until
from tests.support.stack import make_stack

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


def _database() -> tuple[str, str]:
    name = f"dark_bench_{secrets.token_hex(4)}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return name, PG_ADMIN.rsplit("/", 1)[0] + "/" + name


def _redis_db() -> str:
    for db in range(15, 0, -1):
        url = f"redis://127.0.0.1:6379/{db}"
        if redis.Redis.from_url(url).set("dark-test:claimed", "1", nx=True, ex=3600):
            return url
    raise SystemExit("no free Redis DB")


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

    from shared.adapters.db import migrate

    work = Path(tempfile.mkdtemp(prefix="dark-bench-"))
    db_name, db_url = _database()
    redis_url = _redis_db()
    migrate(db_url)
    sim = start_simulator(
        work, "--operation-delay", str(args.boot / 2), "--boot-delay", str(args.boot / 2)
    )
    bao = start_openbao(work)
    stack = make_stack(
        work,
        sim,
        bao,
        db_url,
        redis_url,
        DARK_MAX_INSTANCES_PER_TENANT="0",
        DARK_LOG_LEVEL="WARNING",
    )
    try:
        stack.start_api()
        stack.start_worker(concurrency=2)
        tenants = [f"bench-{i}-{secrets.token_hex(3)}" for i in range(args.n + 2)]
        for t in tenants:
            stack.onboard(t)
        _provision_and_wait(stack, tenants[:1])  # warm-up: imports, connections, SDK discovery
        single = _provision_and_wait(stack, tenants[1:2])
        many = _provision_and_wait(stack, tenants[2:])
    finally:
        stack.stop()
        sim.stop()
        bao.stop()
        redis.Redis.from_url(redis_url).flushdb()
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')
    print(f"machine: {platform.machine()}, {_cores()} cores, Python {platform.python_version()}")
    print(f"simulated VM create+boot: {args.boot:.1f} s; worker: prefork, concurrency 2")
    print(f"single VM provision:          {single:7.2f} s")
    print(f"{args.n} simultaneous provisions: {many:7.2f} s")
    print(
        f"ratio (N / single):           {many / single:7.2f}   (N/concurrency would be "
        f"{args.n / 2:.0f})"
    )


def _cores() -> int:
    import os

    return os.cpu_count() or 0


if __name__ == "__main__":
    main()
