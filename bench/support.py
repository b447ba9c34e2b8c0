"""What every benchmark sets up the same way: its own database and Redis DB number, the simulator,
OpenBao and a stack of real processes on them, all removed at the end."""

import contextlib
import os
import platform
import secrets
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import redis

from tests.support.processes import Simulator, start_openbao, start_simulator
from tests.support.stack import Stack, make_stack

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


@dataclass(frozen=True)
class Bench:
    stack: Stack
    sim: Simulator
    db_url: str
    redis_url: str


@contextlib.contextmanager
def bench_stack(sim_args: list[str], **env: str) -> Iterator[Bench]:
    """A migrated database, a claimed Redis DB, the simulator (started with `sim_args`), OpenBao and
    a stack with `env` on top of the benchmarks' defaults; the gateway is started."""
    from shared.adapters.db import migrate

    work = Path(tempfile.mkdtemp(prefix="dark-bench-"))
    db_name, db_url = _database()
    redis_url = _redis_db()
    migrate(db_url)
    sim = start_simulator(work, *sim_args)
    bao = start_openbao(work)
    stack = make_stack(
        work,
        sim,
        bao,
        db_url,
        redis_url,
        **{"DARK_MAX_INSTANCES_PER_TENANT": "0", "DARK_LOG_LEVEL": "WARNING", **env},
    )
    try:
        stack.start_api()
        yield Bench(stack, sim, db_url, redis_url)
    finally:
        stack.stop()
        sim.stop()
        bao.stop()
        redis.Redis.from_url(redis_url).flushdb()
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')


def machine_line() -> str:
    return f"machine: {platform.machine()}, {os.cpu_count() or 0} cores, Python " + (
        platform.python_version()
    )


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
