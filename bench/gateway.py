"""Gateway list speed: `GET /instances?limit=100` over 100,000 rows, against a bare Flask app that
answers the same JSON bytes, both under the gateway's gunicorn settings
(services/api/gunicorn.conf.py: 2 workers x 4 threads), driven by the same client: `--clients`
threads, each on one keep-alive connection, asking as fast as they are answered. The two servers
take turns (`--rounds` times) so that load from elsewhere on the machine falls on both alike; the
ratio is the gateway's requests per second over the bare app's.

The gateway is the real one: bearer token checked, request id, one log line and the Prometheus
samples per request (multiprocess files), its pool, its Postgres query and its serialisation.
The rows are in a database of their own, seeded by one INSERT ... SELECT over generate_series.

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
    def __init__(self, name: str, app: str, env: dict, workdir: Path) -> None:
        self.name = name
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
    """`clients` threads on keep-alive connections for `seconds`; records req/s and latencies."""
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
        gateway = Server("gateway", "services.api.wsgi:app", env, workdir)
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
            f"  {server.name:>7}: {statistics.median(server.rates):7.0f} req/s"
            f"   p50 {percentile(server.latencies, 0.5) * 1000:5.1f} ms"
            f"   p99 {percentile(server.latencies, 0.99) * 1000:5.1f} ms"
        )
    ratio = statistics.median(gateway.rates) / statistics.median(bare.rates)
    print(f"ratio gateway / bare: {ratio:.2f}   (acceptance ≥ 0.5, gateway p99 ≤ 40 ms)")


if __name__ == "__main__":
    main()
