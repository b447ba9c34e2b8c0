"""The whole stack a chaos run drives, as real processes on servers it can restart.

Private Postgres and Redis (restarted mid-round), OpenBao, one simulator; two gateways on two
ports behind the same database and broker; two provisioner workers and two reconcile workers, each
with a node name of its own as if on its own host; two beats with their own schedule files. Rounds
reuse the stack: each round has tenants of its own.
"""

import contextlib
import os
import pwd
import random
import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import requests

from shared.adapters.db import migrate
from tests.support.private_servers import PrivatePostgres, PrivateRedis
from tests.support.processes import (
    VENV_BIN,
    OpenBao,
    Simulator,
    free_port,
    spawn,
    start_openbao,
    start_simulator,
    wait_until,
)
from tests.support.stack import Stack, make_stack

# Short enough that a round converges within a couple of minutes, long enough to be meaningful:
# the grace period is well above a simulated create, stuck is well above the boot timeout.
SETTINGS = {
    "RECONCILE_INTERVAL_SECS": "3",
    "RECONCILE_ORPHAN_GRACE_SECS": "15",
    "RECONCILE_STUCK_SECS": "90",
    "DARK_GUEST_BOOT_TIMEOUT": "20",
    "DARK_GUEST_TIMEOUT_SECS": "3",
    "DARK_MAX_INSTANCES_PER_TENANT": "20",
    "YC_RPC_TIMEOUT_SECS": "5",
}
WORKERS = ("provisioner-1", "provisioner-2", "reconciler-1", "reconciler-2")
BEATS = ("beat-1", "beat-2")


@dataclass
class ChaosStack:
    workdir: Path
    pg: PrivatePostgres
    redis: PrivateRedis
    bao: OpenBao
    sim: Simulator
    stack: Stack
    database_url: str
    gateways: list[str] = field(default_factory=list)

    @property
    def headers(self) -> dict:
        return self.stack.headers()

    @property
    def folder_id(self) -> str:
        return self.stack.env["YC_FOLDER_ID"]

    def processes(self) -> dict[str, subprocess.Popen]:
        return self.stack.procs

    def dead_processes(self) -> list[str]:
        return sorted(name for name, proc in self.stack.procs.items() if proc.poll() is not None)

    # --- faults ---------------------------------------------------------------------------------

    def kill_worker_child(self, worker: str, rng: random.Random) -> int | None:
        """SIGKILL one pool child of a Celery worker (the parent forks a new one); its pid."""
        parent = self.stack.procs[worker].pid
        found = subprocess.run(["pgrep", "-P", str(parent)], capture_output=True, text=True)
        children = sorted(int(pid) for pid in found.stdout.split())
        if not children:
            return None
        victim = rng.choice(children)
        with contextlib.suppress(ProcessLookupError):
            os.kill(victim, signal.SIGKILL)
        return victim

    def restart_redis(self, down_secs: float, sleep) -> None:
        self.redis.kill()
        sleep(down_secs)
        self.redis.start()

    def restart_postgres(self, down_secs: float, sleep) -> None:
        self.pg.crash()
        sleep(down_secs)
        self.pg.start()

    def clear_faults(self) -> None:
        self.sim.admin("DELETE", "/cloud/faults")
        self.sim.admin("DELETE", "/guests/faults")

    # --- what a secret scan reads ---------------------------------------------------------------

    def log_files(self) -> list[Path]:
        found = [*self.workdir.rglob("*.log"), self.pg.log_path, self.redis.log_path]
        return [p for p in found if p.is_file()]

    def pg_dump(self) -> str:
        dsn_args = ["-h", "127.0.0.1", "-p", str(self.pg.port), "-U", "postgres"]
        done = subprocess.run(
            [str(self.pg.bindir / "pg_dump"), *dsn_args, "--data-only", "chaos"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        return done.stdout

    # --- lifecycle ------------------------------------------------------------------------------

    def stop(self) -> None:
        self.stack.stop()
        self.sim.stop()
        self.bao.stop()
        self.redis.stop()
        self.pg.stop()
        shutil.rmtree(self.pg.root, ignore_errors=True)


def start_gateway(stack: Stack, name: str) -> str:
    port = free_port()
    stack.procs[name] = spawn(
        [str(VENV_BIN / "gunicorn"), "-c", "services/api/gunicorn.conf.py",
         "--bind", f"127.0.0.1:{port}", "services.api.wsgi:app"],
        env=stack.env,
        log_path=stack.log_path(name),
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: requests.get(url + "/health", timeout=1).ok, 30, what=name)
    return url


def _private_postgres_root() -> Path:
    # Postgres refuses to run as root; its cluster then belongs to the postgres user.
    root = Path(tempfile.mkdtemp(prefix="dark-chaos-pg-"))
    if os.geteuid() == 0:
        user = pwd.getpwnam("postgres")
        os.chown(root, user.pw_uid, user.pw_gid)
    return root


def start_chaos_stack(workdir: Path) -> ChaosStack:
    workdir.mkdir(parents=True, exist_ok=True)
    started: list = []
    try:
        pg = PrivatePostgres(_private_postgres_root())
        pg.init()
        pg.start()
        started.append(pg)
        database_url = pg.create_database("chaos")
        migrate(database_url)
        redis = PrivateRedis(workdir / "redis")
        redis.start()
        started.append(redis)
        bao = start_openbao(workdir)
        started.append(bao)
        sim = start_simulator(workdir, "--operation-delay", "0.5", "--boot-delay", "1.0")
        started.append(sim)
        stack = make_stack(workdir, sim, bao, database_url, redis.url, **SETTINGS)
        started.append(stack)
        gateways = [start_gateway(stack, "gateway-1"), start_gateway(stack, "gateway-2")]
        stack.api_url = gateways[0]
        for name in WORKERS[:2]:
            stack.start_worker(name)
        for name in WORKERS[2:]:
            stack.start_reconciler(name)
        for name in BEATS:
            stack.start_beat(name)
    except BaseException:
        for thing in reversed(started):
            thing.stop()
        raise
    return ChaosStack(workdir, pg, redis, bao, sim, stack, database_url, gateways)
