"""Issue 5 end to end: celery-beat and the reconcile worker beside the gateway and the provisioner
worker, on Redis, Postgres, OpenBao and a simulator of the module's own, all as real processes.

Reconcile acts on every row of its registry, so this module's stack has a database of its own.
"""

import itertools
import re
import secrets
import time
from datetime import timedelta

import psycopg
import pytest

from shared.celery_app import make_celery, send_reconcile
from shared.service_layer.reconcile import LOST_REASON, STALL_SECS
from shared.settings import load_settings
from tests.conftest import PG_ADMIN_DSN
from tests.support.processes import wait_until
from tests.support.stack import make_stack, private_database

CREATE_SECS = 3  # the simulated VM create, in the race test
GRACE_SECS = 8  # above CREATE_SECS, as the issue asks
STUCK_SECS = 20  # below the stack's 30 s guest boot timeout, so reconcile is the one that gives up


@pytest.fixture(scope="module")
def reconcile_db():
    with private_database(PG_ADMIN_DSN) as url:
        yield url


@pytest.fixture(scope="module")
def stack(tmp_path_factory, e2e_sim, openbao, reconcile_db, redis_url):
    """The stack with reconcile every second (named `stack`: the conftest's fault reset applies)."""
    s = make_stack(
        tmp_path_factory.mktemp("reconcile"),
        e2e_sim,
        openbao,
        reconcile_db,
        redis_url,
        RECONCILE_INTERVAL_SECS="1",
        RECONCILE_ORPHAN_GRACE_SECS=str(GRACE_SECS),
        RECONCILE_STUCK_SECS=str(STUCK_SECS),
        RECONCILE_RESPAWN_LOST="true",
    )
    s.start_api()
    s.start_worker()
    s.start_reconciler()
    s.start_beat()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def celery(stack):
    """A Celery client on the stack's Redis: to send triggers, read results, control workers."""
    app = make_celery(load_settings(stack.env))
    yield app
    app.close()


def tenant_name(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


def live_vms(stack, name: str) -> list[dict]:
    return [v for v in stack.sim_vms() if v["name"] == name and v["status"] != "DELETING"]


def calls_for(stack, vm_name: str) -> list[str]:
    """The guest API methods the simulator saw for the VM with this name."""
    vm = next(v for v in stack.sim_vms_all() if v["name"] == vm_name)
    by_vm = stack.sim.admin("GET", "/guests/calls")["by_vm"]
    return [c["method"] for c in by_vm.get(vm["id"], [])]


def reasons(stack, tenant: str, instance_id: str) -> list[str]:
    events = stack.api("GET", f"/instances/{tenant}/{instance_id}/events").json()["items"]
    return [e["reason"] or "" for e in events]


def db_now(db_url: str):
    with psycopg.connect(db_url) as conn:
        return conn.execute("SELECT clock_timestamp()").fetchone()[0]


def runs(db_url: str, since=None) -> list[dict]:
    with psycopg.connect(db_url) as conn:
        cur = conn.execute(
            "SELECT id, started_at, finished_at, trigger, counts, actions FROM reconcile_runs"
            " WHERE started_at > coalesce(%s::timestamptz, '-infinity') ORDER BY started_at, id",
            (since,),
        )
        names = [c.name for c in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


# --- the race the design closes ------------------------------------------------------------------


def test_reconcile_every_second_never_deletes_a_vm_being_provisioned(stack, reconcile_db):
    stack.sim.admin("POST", "/cloud/config", json={"operation_delay": CREATE_SECS})
    tenants = [tenant_name("race") for _ in range(10)]
    for tenant in tenants:
        stack.onboard(tenant)
    since = db_now(reconcile_db)
    instances = [stack.provision(tenant) for tenant in tenants for _ in range(2)]
    for inst in instances:
        stack.wait_status(inst["tenant"], inst["id"], "ready", timeout=120)

    names = {inst["vm_name"] for inst in instances}
    log = stack.sim.admin("GET", "/cloud/log")
    assert [e for e in log if e["event"] == "deleted" and e["name"] in names] == []
    assert all(len(live_vms(stack, name)) == 1 for name in names)
    during = runs(reconcile_db, since)
    assert len(during) >= 2 * CREATE_SECS  # reconcile really ran all along
    assert [a for run in during for a in run["actions"] if a["vm_name"] in names] == []


# --- stuck, drift --------------------------------------------------------------------------------


def test_a_guest_that_never_comes_up_fails_as_stuck_and_its_vm_goes(stack):
    tenant = tenant_name("stuck")
    stack.onboard(tenant)
    stack.sim.admin("POST", "/guests/faults", json={"mode": "refuse", "seconds": 120})
    inst = stack.provision(tenant)
    stack.wait_status(tenant, inst["id"], "initializing", timeout=30)
    failed = stack.wait_status(tenant, inst["id"], "failed", timeout=STUCK_SECS + 20)
    assert re.fullmatch(r"stuck in initializing for \d+ s", failed["reason"])
    wait_until(lambda: live_vms(stack, inst["vm_name"]) == [], 15, what="the stuck VM deleted")
    assert reasons(stack, tenant, inst["id"])[-1].startswith("reconcile: deleting VM")


def test_a_vm_deleted_behind_our_back_is_lost_and_respawned_from_the_bundle(stack):
    tenant = tenant_name("drift")
    stack.onboard(tenant)
    inst = stack.wait_status(tenant, stack.provision(tenant)["id"], "ready")
    stack.sim.admin("DELETE", f"/cloud/vms/{inst['provider_id']}")

    lost = stack.wait_status(tenant, inst["id"], "lost", timeout=30)
    assert lost["reason"] == LOST_REASON

    def replacement():
        items = stack.api("GET", f"/instances?tenant={tenant}").json()["items"]
        return next((i for i in items if i["id"] != inst["id"]), None)

    fresh = wait_until(replacement, 30, what="a fresh instance for the tenant")
    fresh = stack.wait_status(tenant, fresh["id"], "ready", timeout=60)
    methods = calls_for(stack, fresh["vm_name"])
    assert "import" in methods and "init" not in methods
    assert f"reconcile provisioned instance {fresh['id']} to replace it" in reasons(
        stack, tenant, inst["id"]
    )
    time.sleep(3)  # the next runs leave both alone
    items = stack.api("GET", f"/instances?tenant={tenant}").json()["items"]
    assert sorted(i["status"] for i in items) == ["lost", "ready"]


# --- one run at a time ---------------------------------------------------------------------------


def test_two_beats_and_a_burst_of_triggers_give_runs_that_never_overlap(
    stack, celery, reconcile_db
):
    stack.start_beat("beat2")
    try:
        task_ids = [send_reconcile(celery, trigger="api") for _ in range(20)]
        results = [celery.AsyncResult(task_id).get(timeout=120) for task_id in task_ids]
        time.sleep(3)  # both beats tick a few more times
    finally:
        stack.terminate("beat2")
    # The reconcile worker runs two at once: some triggers found a run in progress and did nothing.
    assert any(r is None for r in results) and any(r is not None for r in results)

    recorded = runs(reconcile_db)
    assert {"api", "schedule"} <= {run["trigger"] for run in recorded}
    for earlier, later in itertools.pairwise(recorded):
        assert earlier["finished_at"] is not None
        assert earlier["finished_at"] <= later["started_at"], (earlier, later)


# --- interrupted teardown ------------------------------------------------------------------------


def test_a_teardown_whose_worker_was_killed_is_resumed_by_reconcile(stack, celery):
    tenant = tenant_name("td")
    stack.onboard(tenant)
    inst = stack.wait_status(tenant, stack.provision(tenant)["id"], "ready")
    # A second provisioner worker that has done its start-up resume (which would otherwise pick up
    # the teardown) and idles on a queue nobody sends to, until it is told to take over.
    stack.start_worker("standby", queue="dark.standby")
    standby = stack.nodenames["standby"]
    wait_until(lambda: celery.control.ping(destination=[standby], timeout=1), 60, what="standby")

    stack.sim.admin("POST", "/cloud/config", json={"operation_delay": 4})
    assert stack.api("DELETE", f"/instances/{tenant}/{inst['id']}").status_code == 202
    deleting = {"name": inst["vm_name"], "status": "DELETING"}
    wait_until(
        lambda: any(deleting.items() <= v.items() for v in stack.sim_vms()),
        15,
        what="the delete in progress",
    )
    stack.kill("worker")
    try:
        # No worker consumes the provision queue, and the killed worker's messages stay
        # unacknowledged in Redis until the visibility timeout (15 min): only reconcile can move on.
        wait_until(
            lambda: any(
                r.startswith("reconcile resumed the teardown")
                for r in reasons(stack, tenant, inst["id"])
            ),
            STALL_SECS + 30,
            interval=0.5,
            what="reconcile to resume the teardown",
        )
        assert stack.instance(tenant, inst["id"])["status"] == "tearing_down"
    finally:
        celery.control.add_consumer("dark.provision", destination=[standby], reply=True)
    # The resumed message carries the row's only valid token: it is what finishes the teardown.
    stack.wait_status(tenant, inst["id"], "retired", timeout=30)
    assert live_vms(stack, inst["vm_name"]) == []
    log = stack.sim.admin("GET", "/cloud/log")
    assert [e["event"] for e in log if e["name"] == inst["vm_name"]] == ["created", "deleted"]


# --- interval 0 ----------------------------------------------------------------------------------


def test_with_interval_zero_no_run_is_ever_recorded(stack, reconcile_db):
    for name in [n for n in stack.procs if n.startswith("beat")]:
        stack.terminate(name)

    def quiet():  # the last tick's run, if any, has finished and no other followed
        recent = runs(reconcile_db, since=db_now(reconcile_db) - timedelta(seconds=3))
        return not recent and all(r["finished_at"] for r in runs(reconcile_db)[-1:])

    wait_until(quiet, 20, interval=0.5, what="reconcile to go quiet")
    since = db_now(reconcile_db)
    try:
        beat = stack.start_beat("beat-off", RECONCILE_INTERVAL_SECS="0")
        time.sleep(6)
        assert beat.poll() is None, "beat runs, with nothing to schedule"
        assert runs(reconcile_db, since) == []
    finally:
        stack.terminate("beat-off")
        stack.start_beat()
