"""docs/ARCHITECTURE.md#invariants: Redis and Postgres restarted under a provision in flight, on
servers of the module's own (tests/support/private_servers.py), with the whole stack as real
processes: gateway, provisioner worker, reconcile worker and beat.

The invariants after each restart: the instance in flight reaches ready by itself, with exactly
one VM, and no process of the stack has died; the gateway answers 503 with Retry-After (never 500)
while a dependency is down; a request refused then is not lost (repeated with the same
Idempotency-Key, the documented client behaviour, it gives one instance and one VM); and a
reconcile afterwards leaves no VM in the folder without its row.
"""

import secrets
import time
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest

from shared.adapters.db import migrate
from tests.support.private_servers import private_postgres, private_redis
from tests.support.processes import wait_until
from tests.support.stack import make_stack

SLOW_BOOT_SECS = 6  # the guest boot the restarts happen in
REDIS_OUTAGE_SECS = 3
# Longer than a worker waits for a Postgres connection (the instance lock's 10 s) even when its step
# first reaches for one seconds into the outage, so that the step fails with RegistryUnavailable and
# comes back through its retry, not merely late: the pools reconnect within 2 s of Postgres coming
# back (db.MAX_RECONNECT_DELAY), so a wait that outlasts the outage ends in a connection.
PG_OUTAGE_SECS = 20


@pytest.fixture(scope="module")
def pg():
    with private_postgres() as server:
        yield server


@pytest.fixture(scope="module")
def database_url(pg):
    url = pg.create_database("dark_restarts")
    migrate(url)
    return url


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    with private_redis(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture(scope="module")
def restart_stack(tmp_path_factory, e2e_sim, openbao, database_url, broker):
    s = make_stack(
        tmp_path_factory.mktemp("restarts"),
        e2e_sim,
        openbao,
        database_url,
        broker.url,
        RECONCILE_INTERVAL_SECS="1",
        # Reconcile runs every second through the restarts, there to resume lost work, never to
        # delete a VM; the last test checks that no VM is left without its row.
        RECONCILE_ORPHAN_GRACE_SECS="3600",
    )
    try:
        s.start_api()
        s.start_worker()
        s.start_reconciler()
        s.start_beat()
        yield s
    finally:
        s.stop()


@pytest.fixture(autouse=True)
def _slow_guest_boot(e2e_sim):
    e2e_sim.admin("POST", "/guests/config", json={"boot_delay": SLOW_BOOT_SECS})
    yield
    e2e_sim.admin("POST", "/guests/config", json={"boot_delay": 0.5})


def tenant_name(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


def live_vms(stack, name: str) -> list[dict]:
    return [v for v in stack.sim_vms() if v["name"] == name and v["status"] != "DELETING"]


def ready_status(stack) -> int:
    return stack.api("GET", "/ready").status_code


def alive(stack) -> list[str]:
    """The stack's processes still running: a dependency's restart must not take any down."""
    return sorted(name for name, proc in stack.procs.items() if proc.poll() is None)


def no_500_in_gateway_log(stack) -> bool:
    return "status=500" not in stack.log_path("api").read_text(errors="replace")


def test_redis_killed_mid_provision_converges_and_loses_no_request(restart_stack, broker):
    stack = restart_stack
    tenant = tenant_name("redis")
    stack.onboard(tenant)
    inst = stack.provision(tenant)
    stack.wait_status(tenant, inst["id"], "initializing")  # the worker holds its next countdown

    broker.kill()
    down_at = time.monotonic()
    wait_until(lambda: ready_status(stack) == 503, 10, what="/ready to say 503")
    key = secrets.token_hex(8)
    refused = stack.api(
        "POST", "/instances", json={"tenant": tenant}, headers={"Idempotency-Key": key}
    )
    assert refused.status_code == 503, refused.text
    assert refused.headers["Retry-After"]
    # A 503 leaves nothing behind: the row it wrote is taken back, so no retry can double a VM.
    listed = stack.api("GET", f"/instances?tenant={tenant}").json()["items"]
    assert [i["id"] for i in listed] == [inst["id"]]
    time.sleep(max(0.0, REDIS_OUTAGE_SECS - (time.monotonic() - down_at)))
    broker.start()  # same port, same directory: the AOF brings back what Redis held
    wait_until(lambda: ready_status(stack) == 200, 15, what="/ready to say 200")

    again = stack.api(
        "POST", "/instances", json={"tenant": tenant}, headers={"Idempotency-Key": key}
    )
    assert again.status_code == 202, again.text
    retried = again.json()["instance"]

    first = stack.wait_status(tenant, inst["id"], "ready", timeout=45)
    second = stack.wait_status(tenant, retried["id"], "ready", timeout=45)
    assert len(live_vms(stack, first["vm_name"])) == 1
    assert len(live_vms(stack, second["vm_name"])) == 1
    assert len(stack.api("GET", f"/instances?tenant={tenant}").json()["items"]) == 2
    assert alive(stack) == ["api", "beat", "reconciler", "worker"]
    assert no_500_in_gateway_log(stack)


def test_postgres_crashed_mid_provision_answers_503_then_converges(restart_stack, pg):
    stack = restart_stack
    tenant = tenant_name("pg")
    stack.onboard(tenant)
    inst = stack.provision(tenant)
    stack.wait_status(tenant, inst["id"], "initializing")

    pg.crash()
    down_at = time.monotonic()
    key = secrets.token_hex(8)
    calls = {
        "ready": ("GET", "/ready", {}),
        "list": ("GET", f"/instances?tenant={tenant}", {}),
        "detail": ("GET", f"/instances/{tenant}/{inst['id']}", {}),
        "provision": (
            "POST",
            "/instances",
            {"json": {"tenant": tenant}, "headers": {"Idempotency-Key": key}},
        ),
    }
    # At once: each waits up to the pool's timeout for a connection that cannot come.
    with ThreadPoolExecutor(len(calls)) as pool:
        futures = {
            name: pool.submit(stack.api, method, path, **kw)
            for name, (method, path, kw) in calls.items()
        }
        answers = {name: future.result() for name, future in futures.items()}
    for name, resp in answers.items():
        assert resp.status_code == 503, (name, resp.status_code, resp.text)
        assert resp.headers["Retry-After"], name
    time.sleep(max(0.0, PG_OUTAGE_SECS - (time.monotonic() - down_at)))
    pg.start()  # crash recovery from the WAL
    wait_until(lambda: ready_status(stack) == 200, 15, what="/ready to say 200")

    # The refused request committed nothing; the documented retry provisions it.
    again = stack.api(
        "POST", "/instances", json={"tenant": tenant}, headers={"Idempotency-Key": key}
    )
    assert again.status_code == 202, again.text
    first = stack.wait_status(tenant, inst["id"], "ready", timeout=45)
    second = stack.wait_status(tenant, again.json()["instance"]["id"], "ready", timeout=45)
    assert len(live_vms(stack, first["vm_name"])) == 1
    assert len(live_vms(stack, second["vm_name"])) == 1
    assert len(stack.api("GET", f"/instances?tenant={tenant}").json()["items"]) == 2
    assert "registry unavailable, retrying" in stack.log_path("worker").read_text()
    assert alive(stack) == ["api", "beat", "reconciler", "worker"]
    assert no_500_in_gateway_log(stack)


def test_after_the_restarts_reconcile_finds_no_orphan_vm(restart_stack, database_url):
    stack = restart_stack
    # A VM of the test's own, so that the check has one to find when the test runs alone; after
    # the restart tests it finds theirs too.
    tenant = tenant_name("orphans")
    stack.onboard(tenant)
    own = stack.wait_status(tenant, stack.provision(tenant)["id"], "ready", timeout=45)

    def api_run():
        runs = stack.api("GET", "/reconcile/runs?limit=20").json()["items"]
        done = [r for r in runs if r["trigger"] == "api" and r["finished_at"]]
        if done:
            return done[0]
        # A run that finds one of beat's going records nothing: ask again until one is recorded.
        assert stack.api("POST", "/reconcile", json={"dry_run": False}).status_code == 202
        return None

    run = wait_until(api_run, 20, interval=1, what="a requested reconcile run")
    assert run["errors"] == []
    assert {k: run["counts"].get(k, 0) for k in ("orphan", "lost", "stuck", "resume")} == {
        "orphan": 0,
        "lost": 0,
        "stuck": 0,
        "resume": 0,
    }

    with psycopg.connect(database_url) as conn:
        rows = conn.execute("SELECT vm_name, provider_id, status FROM instances").fetchall()
    owned_names = {name for name, _, status in rows if status != "retired"}
    owned_ids = {pid for _, pid, status in rows if status != "retired" and pid}
    vms = stack.sim_vms()
    assert own["vm_name"] in {v["name"] for v in vms}
    orphans = [v for v in vms if v["name"] not in owned_names and v["id"] not in owned_ids]
    assert orphans == []
    ready = [name for name, _, status in rows if status == "ready"]
    assert sorted(v["name"] for v in vms if v["status"] != "DELETING") == sorted(ready)
