"""Private Redis and Postgres servers for tests that kill and restart them.

A test that restarts a server starts its own instance on a free port, never the machine's shared
ones. Each keeps its data in a directory of its own, so a restart on the same port and directory
comes back with what survived the crash, as a production server would:

- Redis runs with the append-only file fsynced on every write (`--appendonly yes --appendfsync
  always`, production's setting), so a SIGKILL loses nothing that was acknowledged.
- Postgres is a cluster of its own (initdb), stopped with `pg_ctl -m immediate` (no shutdown
  checkpoint: crash recovery from the WAL at the next start).

Postgres refuses to run as root: when the tests run as root, the cluster belongs to the `postgres`
user and every server command runs through `runuser`. Its directory is a fresh one under the
system temp dir (pytest's own temp dirs are private to the user running the tests).
"""

import contextlib
import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import redis

from tests.support.processes import free_port, spawn, stop_process, wait_until

# --- Redis ------------------------------------------------------------------------------------


@dataclass
class PrivateRedis:
    workdir: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def log_path(self) -> Path:
        return self.workdir / f"redis-{self.port}.log"

    def start(self) -> None:
        """Start (or restart after a kill) on the same port and data directory."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc = spawn(
            [
                shutil.which("redis-server") or "redis-server",
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--dir", str(self.workdir),
                "--appendonly", "yes",
                "--appendfsync", "always",
                "--save", "",
                "--daemonize", "no",
                "--logfile", str(self.log_path),
            ],
        )  # fmt: skip

        def answers() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited: {self.log_path.read_text()[-2000:]}")
            with redis.Redis(port=self.port, socket_timeout=1) as client:
                return client.ping()

        wait_until(answers, 15, what="private redis-server")

    def kill(self) -> None:
        """SIGKILL: no shutdown, no final save; only the fsynced AOF survives."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)


@contextlib.contextmanager
def private_redis(workdir: Path):
    server = PrivateRedis(workdir)
    server.start()
    try:
        yield server
    finally:
        server.stop()


# --- Postgres ---------------------------------------------------------------------------------


def postgres_bindir() -> Path:
    """The newest Debian-packaged Postgres (initdb, pg_ctl), or the one on PATH."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=_version_key)
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("pg_ctl")
    if not on_path:
        raise RuntimeError("no Postgres server binaries (initdb, pg_ctl) found")
    return Path(on_path).parent


def _version_key(path: str) -> int:
    part = Path(path).parts[-3]
    return int(part) if part.isdigit() else 0


@dataclass
class PrivatePostgres:
    root: Path  # owned by the server's user; holds data/, the socket and the log
    port: int = field(default_factory=free_port)
    bindir: Path = field(default_factory=postgres_bindir)

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def log_path(self) -> Path:
        return self.root / "postgres.log"

    @property
    def admin_dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess:
        cmd = [str(self.bindir / argv[0]), *argv[1:]]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        return subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, check=True, cwd=self.root
        )

    def init(self) -> None:
        self._run(
            "initdb",
            "-D", str(self.data),
            "-U", "postgres",
            "--auth=trust",
            "--no-sync",
            "--encoding=UTF8",
            "--locale=C",
        )  # fmt: skip

    def start(self) -> None:
        """Start (or restart after an immediate stop) on the same port and data directory."""
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root}"
            # A crash of the server process (not of the machine) loses no WAL without fsync.
            " -c fsync=off -c full_page_writes=off -c max_connections=100"
        )
        self._run("pg_ctl", "start", "-w", "-t", "30", "-D", str(self.data),
                  "-l", str(self.log_path), "-o", options)  # fmt: skip
        wait_until(self._answers, 15, what="private Postgres")

    def _answers(self) -> bool:
        with psycopg.connect(self.admin_dsn, connect_timeout=2) as conn:
            return conn.execute("SELECT 1").fetchone() == (1,)

    def crash(self) -> None:
        """`pg_ctl stop -m immediate`: every backend dies at once, recovery runs at next start."""
        self._run("pg_ctl", "stop", "-w", "-m", "immediate", "-D", str(self.data))

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def stop(self) -> None:
        if not self.running():
            return
        try:
            self._run("pg_ctl", "stop", "-w", "-t", "20", "-m", "fast", "-D", str(self.data))
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
            self._kill_postmaster()

    def _kill_postmaster(self) -> None:
        with contextlib.suppress(FileNotFoundError, ValueError, ProcessLookupError):
            pid = int((self.data / "postmaster.pid").read_text().split()[0])
            os.kill(pid, signal.SIGKILL)  # its backends exit when the postmaster is gone
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                os.kill(pid, 0)
                time.sleep(0.1)

    def create_database(self, name: str) -> str:
        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"


@contextlib.contextmanager
def private_postgres():
    """A fresh cluster on a free port, removed afterwards (also when a test fails)."""
    root = Path(tempfile.mkdtemp(prefix="dark-test-pg-"))
    if os.geteuid() == 0:
        user = pwd.getpwnam("postgres")
        os.chown(root, user.pw_uid, user.pw_gid)
    server = PrivatePostgres(root)
    try:
        server.init()
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
