"""The whole stack as real processes: gunicorn gateway, Celery worker, simulators, OpenBao."""

import contextlib
import secrets
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import redis
import requests

from tests.support.processes import (
    VENV_BIN,
    OpenBao,
    Simulator,
    free_port,
    spawn,
    stop_process,
    wait_until,
)

TERMINAL = {"ready", "failed", "retired", "lost"}


@dataclass
class Stack:
    workdir: Path
    env: dict
    api_url: str
    api_token: str
    sim: Simulator
    bao: OpenBao
    procs: dict = field(default_factory=dict)
    nodenames: dict = field(default_factory=dict)  # Celery node name of each worker, by name

    # --- processes ------------------------------------------------------------------------------

    def start_api(self) -> None:
        bind = self.api_url.removeprefix("http://")
        self.procs["api"] = spawn(
            [
                str(VENV_BIN / "gunicorn"),
                "-c",
                "services/api/gunicorn.conf.py",
                "--bind",
                bind,
                "services.api.wsgi:app",
            ],
            env=self.env,
            log_path=self.log_path("api"),
        )
        wait_until(lambda: requests.get(self.api_url + "/health", timeout=1).ok, 30, what="gateway")

    def start_onboarding(self, token: str, port: int | None = None) -> str:
        """The onboarding service under gunicorn with its own token (on `port`, or a free one);
        returns its base URL."""
        port = port or free_port()
        self.procs["onboarding"] = spawn(
            [
                str(VENV_BIN / "gunicorn"),
                "-c",
                "services/onboarding/gunicorn.conf.py",
                "--bind",
                f"127.0.0.1:{port}",
                "services.onboarding.wsgi:app",
            ],
            env={**self.env, "DARK_ONBOARDING_TOKENS": token},
            log_path=self.log_path("onboarding"),
        )
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: requests.get(url + "/health", timeout=1).ok, 30, what="onboarding")
        return url

    def start_worker(
        self, name: str = "worker", concurrency: int = 2, queue: str = "dark.provision"
    ) -> subprocess.Popen:
        """A provisioner worker; on another `queue` it idles until told to consume (Celery's
        `add_consumer`), having done its start-up resume already."""
        return self._start_celery_worker(name, "services.provisioner.worker", queue, concurrency)

    def start_reconciler(self, name: str = "reconciler", concurrency: int = 2) -> subprocess.Popen:
        module = "services.reconciler.worker"
        return self._start_celery_worker(name, module, "dark.reconcile", concurrency)

    def start_beat(self, name: str = "beat", **env_overrides: str) -> subprocess.Popen:
        """A celery-beat of the reconciler, with its own schedule file in the stack's workdir."""
        proc = spawn(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "services.reconciler.worker",
                "beat",
                f"--schedule={self.workdir / name}-schedule",
                "--loglevel=INFO",
            ],
            env={**self.env, **env_overrides},
            log_path=self.log_path(name),
        )
        self.procs[name] = proc
        return proc

    def _start_celery_worker(
        self, name: str, module: str, queue: str, concurrency: int
    ) -> subprocess.Popen:
        nodename = f"{name}-{secrets.token_hex(3)}@{socket.gethostname()}"
        proc = spawn(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                module,
                "worker",
                "-Q",
                queue,
                "--pool=prefork",
                f"--concurrency={concurrency}",
                f"--hostname={nodename}",
                "--without-gossip",
                "--without-mingle",
                "--loglevel=INFO",
            ],
            env=self.env,
            log_path=self.log_path(name),
        )
        self.procs[name] = proc
        self.nodenames[name] = nodename
        return proc

    def start_flower(self, basic_auth: str, name: str = "flower") -> str:
        """Flower on a free loopback port, as `make run` starts it (credentials in its
        environment, never FLOWER_UNAUTHENTICATED_API); returns its URL once it answers."""
        port = free_port()
        env = {**self.env, "FLOWER_BASIC_AUTH": basic_auth}
        env.pop("FLOWER_UNAUTHENTICATED_API", None)
        self.procs[name] = spawn(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "services.provisioner.worker",
                "flower",
                "--address=127.0.0.1",
                f"--port={port}",
            ],
            env=env,
            log_path=self.log_path(name),
        )
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: requests.get(url + "/healthcheck", timeout=1).ok, 30, what="Flower")
        return url

    def terminate(self, name: str) -> None:
        """Stop one process gracefully (SIGTERM to its group)."""
        stop_process(self.procs.pop(name))

    def kill(self, name: str) -> None:
        """SIGKILL the whole process group (the worker parent and its children)."""
        import os
        import signal

        proc = self.procs.pop(name)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)

    def log_path(self, name: str) -> Path:
        return self.workdir / f"{name}.log"

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in self.workdir.glob("*.log"))

    def stop(self) -> None:
        for proc in self.procs.values():
            stop_process(proc)
        self.procs.clear()

    # --- API helpers ----------------------------------------------------------------------------

    def headers(self, **extra) -> dict:
        return {"Authorization": f"Bearer {self.api_token}", **extra}

    def api(self, method: str, path: str, **kwargs) -> requests.Response:
        headers = {**self.headers(), **kwargs.pop("headers", {})}
        return requests.request(method, self.api_url + path, headers=headers, timeout=15, **kwargs)

    def provision(self, tenant: str, **headers) -> dict:
        resp = self.api("POST", "/instances", json={"tenant": tenant}, headers=headers)
        assert resp.status_code == 202, resp.text
        return resp.json()["instance"]

    def instance(self, tenant: str, instance_id: str) -> dict:
        resp = self.api("GET", f"/instances/{tenant}/{instance_id}")
        assert resp.status_code == 200, resp.text
        return resp.json()["instance"]

    def wait_status(self, tenant: str, instance_id: str, statuses, timeout: float = 60) -> dict:
        statuses = {statuses} if isinstance(statuses, str) else set(statuses)
        seen: list[str] = []

        def reached():
            inst = self.instance(tenant, instance_id)
            if not seen or seen[-1] != inst["status"]:
                seen.append(inst["status"])
            return inst if inst["status"] in statuses else None

        try:
            return wait_until(reached, timeout, interval=0.2, what=f"{instance_id} in {statuses}")
        except TimeoutError as exc:
            raise AssertionError(f"statuses seen: {seen}\n{self.logs()[-4000:]}") from exc

    def onboard(
        self,
        tenant: str,
        claude_token: str | None = None,
        nks_pat: str | None = None,
        *,
        vault: bool = True,
    ):
        """Onboard as the onboarding service does: secrets into Vault, the tenant into the
        directory. `vault=False` records the tenant without secrets (offboarded behind our back).
        """
        claude_token = claude_token or "sk-ant-oat01-" + secrets.token_urlsafe(32)
        nks_pat = nks_pat or "nks-" + secrets.token_urlsafe(16)
        version = 1
        if vault:
            from urllib.parse import quote

            written = self.bao.client().secrets.kv.v2.create_or_update_secret(
                path=f"tenants/{quote(tenant, safe='')}",
                secret={
                    "claude_oauth_token": claude_token,
                    "nks_pat": nks_pat,
                    "forges": [{"name": "gh", "host": "github.com", "token": "ghp_" + "x" * 20}],
                },
                mount_point="secret",
            )
            version = written["data"]["version"]
        with psycopg.connect(self.env["DATABASE_URL"]) as conn:
            conn.execute(
                "INSERT INTO tenants (name, onboarded_at, updated_at, secrets_version)"
                " VALUES (%s, now(), now(), %s) ON CONFLICT (name) DO UPDATE"
                " SET onboarded_at = now(), updated_at = now(), offboarded_at = NULL,"
                " secrets_version = EXCLUDED.secrets_version",
                (tenant, version),
            )
        return claude_token, nks_pat

    def sim_vms_all(self) -> list[dict]:
        return self.sim.admin("GET", "/cloud/vms")

    def sim_vms(self) -> list[dict]:
        folder = self.env["YC_FOLDER_ID"]
        return self.sim.admin("GET", f"/cloud/vms?folder_id={folder}")


def make_stack(
    workdir: Path, sim: Simulator, bao: OpenBao, database_url: str, redis_url: str, **overrides
) -> Stack:
    token = "op-" + secrets.token_hex(16)
    env = {
        **sim.yc_env(),
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "VAULT_ADDR": bao.addr,
        "VAULT_TOKEN": bao.token,
        "DARK_API_TOKENS": token,
        "YC_FOLDER_ID": "e2e-" + secrets.token_hex(4),
        "DARK_DEPLOYMENT": "e2e-" + secrets.token_hex(3),
        "DARK_GUEST_BOOT_TIMEOUT": "30",
        "DARK_LOG_LEVEL": "INFO",
        "PYTHONUNBUFFERED": "1",
        **overrides,
    }
    return Stack(
        workdir=workdir,
        env=env,
        api_url=f"http://127.0.0.1:{free_port()}",
        api_token=token,
        sim=sim,
        bao=bao,
    )


@contextlib.contextmanager
def private_database(admin_dsn: str) -> Iterator[str]:
    """A migrated database of the caller's own, dropped afterwards: for tests of reconcile, which
    acts on every row of the registry it is given."""
    from shared.adapters.db import migrate

    name = f"dark_test_{secrets.token_hex(6)}"
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = f"{admin_dsn.rsplit('/', 1)[0]}/{name}"
    try:
        migrate(url)
        yield url
    finally:
        with psycopg.connect(admin_dsn, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def claimed_redis_db(base_url: str) -> Iterator[str]:
    """A Redis DB number of the caller's own (the first unclaimed of 1 to 15), flushed after."""
    for db in range(15, 0, -1):
        client = redis.Redis.from_url(f"{base_url}/{db}")
        # Claim the DB atomically so that two concurrent sessions never share one.
        if client.set("dark-test:claimed", "1", nx=True, ex=6 * 3600):
            try:
                yield f"{base_url}/{db}"
            finally:
                client.flushdb()
                client.close()
            return
    raise RuntimeError("no free Redis DB number between 1 and 15")
