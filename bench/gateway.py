"""Gateway list speed: `GET /instances?limit=100` over 100,000 rows, against a bare Flask app that
answers the same JSON bytes, both under the gateway's gunicorn settings
(services/api/gunicorn.conf.py: 2 workers x 4 threads), driven by the same client: `--clients`
threads, each on one keep-alive connection, asking as fast as they are answered. The two servers
take turns (`--rounds` times) so that load from elsewhere on the machine falls on both alike; the
ratio is the gateway's requests per second over the bare app's.

The gateway is the real one: bearer token checked, request id, one log line and the Prometheus
samples per request (multiprocess files), its pool, its Postgres query and its serialisation.
The rows are in a database of their own, seeded by one INSERT ... SELECT over generate_series.

A third server takes its turn too: the same gateway with its Postgres read taken out
(bench/gateway_without_read.py), which tells what the read costs and what the rest of the gateway
costs. For each server the CPU time spent per request is printed as well, from /proc: by its
gunicorn workers, by the Postgres backends it talks to (told apart by application_name) and by this
client. Unlike requests per second, which move with whatever else the machine is doing, these
repeat from run to run within a few per cent, and they say where a request's time goes.

    .venv/bin/python -m bench.gateway --rows 100000 --seconds 5
"""

import argparse
import http.client
import json
import os
import platform
import secrets
import statistics
import tempfile
import threading
import time
from pathlib import Path

import psycopg

from shared.adapters.db import migrate
from tests.support.processes import VENV_BIN, free_port, spawn, stop_process, wait_until

PG_ADMIN = os.environ.get("TEST_PG_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/15")
PATH = "/instances?limit=100"
STATUSES = ["ready", "ready", "ready", "retired", "failed", "pending", "provisioning"]


def seed(db_url: str, rows: int) -> None:
    """`rows` instances of 500 tenants in mixed states, one second apart, some with addresses."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO instances (id, tenant, status, vm_name, idempotency_key, provider_id,"
            " address, reason, created_at, updated_at, status_changed_at)"
            " SELECT id, 'tenant-' || (n %% 500), s, 'dark-vm-' || id, gen_random_uuid(),"
            "  CASE WHEN n %% 3 = 0 THEN NULL ELSE 'fhm' || n END,"
            "  CASE WHEN s = 'ready' THEN '10.0.' || (n %% 250) || '.' || (n %% 200) END,"
            "  CASE WHEN s = 'failed' THEN 'guest did not answer within 600 s' END,"
            "  t, t, t"
            " FROM (SELECT n, gen_random_uuid() AS id,"
            "  (%s::text[])[1 + n %% %s] AS s,"
            "  now() - make_interval(secs => n) AS t"
            "  FROM generate_series(1, %s) AS n) AS g",
            (STATUSES, len(STATUSES), rows),
        )
        conn.execute("VACUUM ANALYZE instances")


class Server:
    def __init__(
        self, name: str, app: str, env: dict, workdir: Path, *, database: str | None = None
    ) -> None:
        self.name = name
        # The database whose backends this server's connections use (by application_name).
        self.database = database
        self.port = free_port()
        self.proc = spawn(
            [
                str(VENV_BIN / "gunicorn"),
                "-c",
                "services/api/gunicorn.conf.py",
                "--bind",
                f"127.0.0.1:{self.port}",
                app,
            ],
            env=env,
            log_path=workdir / f"{name}.log",
        )
        wait_until(lambda: self.get("/health")[0] == 200, 30, what=name)
        self.rates: list[float] = []
        self.latencies: list[float] = []
        # CPU milliseconds per request, each round: workers, Postgres backends, this client.
        self.cpu: list[tuple[float, float, float]] = []

    def get(self, path: str, headers: dict | None = None) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request("GET", path, headers=headers or {})
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    def stop(self) -> None:
        stop_process(self.proc)


def drive(server: Server, headers: dict, clients: int, seconds: float) -> None:
    """`clients` threads on keep-alive connections for `seconds`; records req/s, latencies and
    the CPU time each side spent per request."""
    workers = _children(server.proc.pid)
    backends = _backends(server)
    before = (_cpu_seconds(workers), _cpu_seconds(backends), _own_cpu_seconds())
    served = len(server.latencies)
    _load(server, headers, clients, seconds)
    after = (_cpu_seconds(workers), _cpu_seconds(backends), _own_cpu_seconds())
    served = len(server.latencies) - served
    if served:
        workers_ms, backends_ms, client_ms = (
            (b - a) * 1000 / served for a, b in zip(before, after, strict=True)
        )
        server.cpu.append((workers_ms, backends_ms, client_ms))


def _load(server: Server, headers: dict, clients: int, seconds: float) -> None:
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors: list[str] = []
    start = threading.Barrier(clients + 1)
    stop_at: list[float] = []

    def client(index: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        mine = latencies[index]
        start.wait()
        try:
            while time.perf_counter() < stop_at[0]:
                began = time.perf_counter()
                conn.request("GET", PATH, headers=headers)
                response = conn.getresponse()
                response.read()
                mine.append(time.perf_counter() - began)
                if response.status != 200:
                    errors.append(f"{server.name}: HTTP {response.status}")
                    return
        finally:
            conn.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    stop_at.append(time.perf_counter() + seconds)
    began = time.perf_counter()
    start.wait()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began
    if errors:
        raise RuntimeError(errors[0])
    done = [latency for mine in latencies for latency in mine]
    server.rates.append(len(done) / elapsed)
    server.latencies.extend(done)


_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (a gunicorn master's workers); none without /proc."""
    found = []
    for entry in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = entry.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(entry.parent.name))
    return found


def _backends(server: Server) -> list[int]:
    """The Postgres backends serving `server` (Postgres runs on this machine)."""
    if server.database is None:
        return []
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s AND application_name = %s",
            (server.database, server.name),
        ).fetchall()
    return [row[0] for row in rows]


def _cpu_seconds(pids: list[int]) -> float:
    """User and system CPU seconds the processes have used so far (all their threads)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / _TICKS


def _own_cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=5, help="per server per round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="dark-bench-gateway-"))
    db_name = f"dark_bench_{secrets.token_hex(4)}"
    db_url = f"{PG_ADMIN.rsplit('/', 1)[0]}/{db_name}"
    token = secrets.token_urlsafe(32)
    headers = {"Authorization": f"Bearer {token}"}
    servers: list[Server] = []
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{db_name}"')
    try:
        migrate(db_url)
        seed(db_url, args.rows)
        env = {
            "DATABASE_URL": db_url,
            "REDIS_URL": REDIS_URL,
            "DARK_API_TOKENS": token,
            "LOG_LEVEL": "INFO",
        }
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)

        def gateway_server(name: str, app: str) -> Server:
            # Its Postgres backends told apart from the other gateway's by application_name.
            url = f"{db_url}?application_name={name}"
            return Server(name, app, {**env, "DATABASE_URL": url}, workdir, database=db_name)

        gateway = gateway_server("gateway", "services.api.wsgi:app")
        servers.append(gateway)
        status, body = gateway.get(PATH, headers)
        assert status == 200, body
        assert len(json.loads(body)["items"]) == 100
        body_path = workdir / "body.json"
        body_path.write_bytes(body)
        bare = Server(
            "bare", "bench.bare_app:app", {**env, "BENCH_BARE_BODY": str(body_path)}, workdir
        )
        servers.append(bare)
        assert bare.get(PATH)[1] == body
        without_read = gateway_server("without-read", "bench.gateway_without_read:make_app()")
        servers.append(without_read)
        assert without_read.get(PATH, headers)[1] == body
        for server in servers:  # warm-up: imports, pools, first queries
            drive(server, headers, args.clients, 1)
            server.rates.clear()
            server.latencies.clear()
        for _ in range(args.rounds):
            for server in servers:
                drive(server, headers, args.clients, args.seconds)
    finally:
        for server in servers:
            server.stop()
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')

    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    )
    print(
        f"GET {PATH} over {args.rows} rows ({len(body)} bytes), {args.clients} keep-alive clients,"
        f" {args.rounds} rounds of {args.seconds:g} s each, alternating:"
    )
    for server in servers:
        print(
            f"  {server.name:>12}: {statistics.median(server.rates):7.0f} req/s"
            f"   p50 {percentile(server.latencies, 0.5) * 1000:5.1f} ms"
            f"   p99 {percentile(server.latencies, 0.99) * 1000:5.1f} ms"
        )
    print("CPU ms per request (median of the rounds): gunicorn workers / Postgres / client")
    for server in servers:
        workers, backends, client = (
            statistics.median(round_[i] for round_ in server.cpu) for i in range(3)
        )
        print(f"  {server.name:>12}: {workers:.3f} / {backends:.3f} / {client:.3f}")
    ratio = statistics.median(gateway.rates) / statistics.median(bare.rates)
    print(f"ratio gateway / bare: {ratio:.2f}   (acceptance ≥ 0.5, gateway p99 ≤ 40 ms)")
    ratio = statistics.median(without_read.rates) / statistics.median(bare.rates)
    print(f"ratio gateway without its Postgres read / bare: {ratio:.2f}   (what the read costs)")


if __name__ == "__main__":
    main()
