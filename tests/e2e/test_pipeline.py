"""Issue 3 end to end: gunicorn gateway, Celery prefork worker (concurrency 2), Redis, Postgres,
OpenBao and the simulators, all as real processes."""

import re
import secrets
import threading
import time

import psycopg
import pytest
import redis

from tests.support.processes import wait_until


def tenant_name(prefix: str = "t") -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


def guest_calls(stack) -> dict:
    return stack.sim.admin("GET", "/guests/calls")


def calls_for(stack, vm_name: str) -> list[str]:
    """The guest API methods the simulator saw for the VM with this name."""
    vm = next(v for v in stack.sim_vms_all() if v["name"] == vm_name)
    return [c["method"] for c in guest_calls(stack)["by_vm"].get(vm["id"], [])]


def bundle_row(database_url: str, tenant: str):
    with psycopg.connect(database_url) as conn:
        return conn.execute(
            "SELECT wrapped_key, nonce, ciphertext, updated_at FROM credential_bundles"
            " WHERE tenant = %s",
            (tenant,),
        ).fetchone()


def live_vms(stack, name: str) -> list[dict]:
    return [v for v in stack.sim_vms() if v["name"] == name and v["status"] != "DELETING"]


# --- the happy path ------------------------------------------------------------------------------


def test_provision_reaches_ready_with_a_timeline_and_a_reachable_guest(stack):
    tenant = tenant_name("happy")
    stack.onboard(tenant)
    resp = stack.api("POST", "/instances", json={"tenant": tenant})
    assert resp.status_code == 202
    body = resp.json()
    assert body["instance"]["status"] == "pending" and body["task_id"]
    iid = body["instance"]["id"]

    inst = stack.wait_status(tenant, iid, "ready")
    assert inst["address"] and inst["provider_id"] and inst["vm_name"] == f"dark-vm-{iid}"

    detail = stack.api("GET", f"/instances/{tenant}/{iid}").json()
    assert detail["entry_points"]["opencode_url"] == f"http://{inst['address']}:4096"
    port = stack.env["DARK_AGENT_PORT"]
    assert detail["entry_points"]["agent_url"] == f"http://{inst['address']}:{port}"
    assert detail["guest"]["reachable"] is True
    assert detail["guest"]["health"]["status"] == "ok"

    events = stack.api("GET", f"/instances/{tenant}/{iid}/events").json()["items"]
    assert [(e["from"], e["to"]) for e in events] == [
        (None, "pending"),
        ("pending", "provisioning"),
        ("provisioning", "initializing"),
        ("initializing", "ready"),
    ]
    assert all(e["reason"] for e in events)
    assert len(live_vms(stack, inst["vm_name"])) == 1


def test_second_vm_imports_the_bundle_and_leaves_it_unchanged(stack, migrated_database_url):
    tenant = tenant_name("second")
    stack.onboard(tenant)
    first = stack.provision(tenant)
    first = stack.wait_status(tenant, first["id"], "ready")
    row_before = bundle_row(migrated_database_url, tenant)
    assert row_before is not None

    second = stack.provision(tenant)
    second = stack.wait_status(tenant, second["id"], "ready")
    assert "init" in calls_for(stack, first["vm_name"])
    assert "import" in calls_for(stack, second["vm_name"])
    assert "init" not in calls_for(stack, second["vm_name"])
    assert bundle_row(migrated_database_url, tenant) == row_before
    pubkeys = {
        stack.sim.admin("GET", f"/guests/vms/{vm['id']}")["ssh_pubkey"]
        for vm in stack.sim_vms()
        if vm["name"] in (first["vm_name"], second["vm_name"])
    }
    assert len(pubkeys) == 1


def test_two_simultaneous_first_provisions_init_once(stack, migrated_database_url):
    tenant = tenant_name("race")
    stack.onboard(tenant)
    results = []
    threads = [
        threading.Thread(target=lambda: results.append(stack.provision(tenant))) for _ in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ready = [stack.wait_status(tenant, inst["id"], "ready") for inst in results]
    methods = [calls_for(stack, inst["vm_name"]) for inst in ready]
    assert sorted(m.count("init") for m in methods) == [0, 1]
    assert sorted(m.count("import") for m in methods) == [0, 1]
    with psycopg.connect(migrated_database_url) as conn:
        n = conn.execute(
            "SELECT count(*) FROM credential_bundles WHERE tenant = %s", (tenant,)
        ).fetchone()[0]
    assert n == 1


# --- teardown ------------------------------------------------------------------------------------


def test_teardown_keep_then_retire_on_the_last_vm(stack, migrated_database_url):
    tenant = tenant_name("down")
    stack.onboard(tenant)
    a = stack.wait_status(tenant, stack.provision(tenant)["id"], "ready")
    b = stack.wait_status(tenant, stack.provision(tenant)["id"], "ready")

    resp = stack.api("DELETE", f"/instances/{tenant}/{a['id']}?mode=keep")
    assert resp.status_code == 202
    stack.wait_status(tenant, a["id"], "retired")
    assert live_vms(stack, a["vm_name"]) == []
    assert bundle_row(migrated_database_url, tenant) is not None

    again = stack.api("DELETE", f"/instances/{tenant}/{a['id']}?mode=keep")
    assert again.status_code == 202 and again.json()["instance"]["status"] == "retired"

    assert stack.api("DELETE", f"/instances/{tenant}/{b['id']}?mode=retire").status_code == 202
    stack.wait_status(tenant, b["id"], "retired")
    assert live_vms(stack, b["vm_name"]) == []
    assert bundle_row(migrated_database_url, tenant) is None


def test_delete_while_provisioning_leaves_no_vm(stack):
    tenant = tenant_name("cancel")
    stack.onboard(tenant)
    stack.sim.admin("POST", "/cloud/config", json={"operation_delay": 3})
    inst = stack.provision(tenant)
    stack.wait_status(tenant, inst["id"], "provisioning")
    wait_until(lambda: stack.instance(tenant, inst["id"])["provider_id"], 10, what="provider id")
    assert stack.api("DELETE", f"/instances/{tenant}/{inst['id']}").status_code == 202
    stack.wait_status(tenant, inst["id"], "retired", timeout=30)
    wait_until(lambda: live_vms(stack, inst["vm_name"]) == [], 15, what="VM gone")
    time.sleep(2)  # nothing may bring it back
    assert [v for v in stack.sim_vms() if v["name"] == inst["vm_name"]] == []


# --- failure paths -------------------------------------------------------------------------------


def test_tenant_never_onboarded_is_refused_by_the_gateway_and_no_vm_is_made(stack):
    tenant = tenant_name("nobody")
    before = stack.sim.admin("GET", "/cloud/calls").get("Create", 0)
    resp = stack.api("POST", "/instances", json={"tenant": tenant})
    assert resp.status_code == 409
    assert resp.json()["error"]["code"] == "tenant_not_onboarded"
    assert stack.sim.admin("GET", "/cloud/calls").get("Create", 0) == before


def test_secrets_gone_from_vault_fails_the_provision_with_the_reason(stack):
    tenant = tenant_name("nobody")
    stack.onboard(tenant, vault=False)
    inst = stack.provision(tenant)
    failed = stack.wait_status(tenant, inst["id"], "failed")
    assert failed["reason"] == "tenant not onboarded"
    wait_until(lambda: live_vms(stack, inst["vm_name"]) == [], 15, what="failed VM cleaned up")


def test_rejected_claude_token_fails_with_the_guests_message(stack):
    tenant = tenant_name("badtoken")
    stack.onboard(tenant, claude_token="not-a-claude-token-" + secrets.token_hex(8))
    inst = stack.provision(tenant)
    failed = stack.wait_status(tenant, inst["id"], "failed")
    assert failed["reason"].startswith("claude token rejected by the guest:")


@pytest.mark.parametrize(
    "fault",
    [
        # quota errors arrive inside the finished operation...
        {"method": "Create", "code": "RESOURCE_EXHAUSTED", "where": "operation", "count": 2},
        # ...an outage on the RPC itself
        {"method": "Create", "code": "UNAVAILABLE", "where": "rpc", "seconds": 3},
    ],
    ids=["resource_exhausted_in_operation", "unavailable_on_rpc"],
)
def test_transient_cloud_errors_for_a_while_are_retried_to_ready(stack, fault):
    tenant = tenant_name("transient")
    stack.onboard(tenant)
    stack.sim.admin("POST", "/cloud/faults", json=fault)
    inst = stack.provision(tenant)
    stack.wait_status(tenant, inst["id"], "ready", timeout=60)
    assert len(live_vms(stack, inst["vm_name"])) == 1


def test_guest_503_for_a_while_is_retried_to_ready(stack):
    tenant = tenant_name("g503")
    stack.onboard(tenant)
    stack.sim.admin("POST", "/guests/faults", json={"mode": "unavailable", "seconds": 4})
    inst = stack.provision(tenant)
    stack.wait_status(tenant, inst["id"], "ready", timeout=60)


def _unseal_key(bao) -> str:
    match = re.search(r"Unseal Key: (\S+)", bao.log_path.read_text())
    assert match, "the dev server prints its unseal key"
    return match.group(1)


def test_sealed_vault_makes_the_step_wait_without_init_then_ready(stack):
    tenant = tenant_name("sealed")
    stack.onboard(tenant)
    client = stack.bao.client()
    key = _unseal_key(stack.bao)
    client.sys.seal()
    try:
        inst = stack.provision(tenant)
        stack.wait_status(tenant, inst["id"], "initializing")
        time.sleep(4)
        assert stack.instance(tenant, inst["id"])["status"] == "initializing"
        assert "init" not in calls_for(stack, inst["vm_name"])
    finally:
        client.sys.submit_unseal_key(key)
    stack.wait_status(tenant, inst["id"], "ready", timeout=60)


def test_unreadable_bundle_store_never_inits(stack, migrated_database_url):
    tenant = tenant_name("unread")
    stack.onboard(tenant)
    stack.wait_status(tenant, stack.provision(tenant)["id"], "ready")
    before = bundle_row(migrated_database_url, tenant)
    with psycopg.connect(migrated_database_url) as conn:  # corrupt it: it no longer decrypts
        conn.execute(
            "UPDATE credential_bundles SET nonce = decode(repeat('00', 12), 'hex')"
            " WHERE tenant = %s",
            (tenant,),
        )
    inst = stack.provision(tenant)
    stack.wait_status(tenant, inst["id"], "initializing")
    time.sleep(4)
    assert stack.instance(tenant, inst["id"])["status"] == "initializing"
    methods = calls_for(stack, inst["vm_name"])
    assert "init" not in methods and "import" not in methods
    with psycopg.connect(migrated_database_url) as conn:  # repair it: the provision completes
        conn.execute(
            "UPDATE credential_bundles SET nonce = %s WHERE tenant = %s", (before[1], tenant)
        )
    stack.wait_status(tenant, inst["id"], "ready", timeout=30)
    assert "import" in calls_for(stack, inst["vm_name"])


def test_same_idempotency_key_gives_one_instance_and_one_vm(stack):
    tenant = tenant_name("idem")
    stack.onboard(tenant)
    key = secrets.token_hex(8)
    r1 = stack.api("POST", "/instances", json={"tenant": tenant}, headers={"Idempotency-Key": key})
    r2 = stack.api("POST", "/instances", json={"tenant": tenant}, headers={"Idempotency-Key": key})
    assert r1.status_code == r2.status_code == 202
    assert r1.json()["instance"]["id"] == r2.json()["instance"]["id"]
    assert r1.json()["task_id"] == r2.json()["task_id"]
    inst = stack.wait_status(tenant, r1.json()["instance"]["id"], "ready")
    assert len(live_vms(stack, inst["vm_name"])) == 1
    listed = stack.api("GET", f"/instances?tenant={tenant}").json()["items"]
    assert len(listed) == 1


# --- crash safety --------------------------------------------------------------------------------


@pytest.mark.parametrize("phase", ["operation", "guest_boot", "teardown"])
def test_worker_killed_mid_step_converges_after_restart(stack, phase):
    tenant = tenant_name(f"kill-{phase[:4]}")
    stack.onboard(tenant)
    if phase == "teardown":
        inst = stack.wait_status(tenant, stack.provision(tenant)["id"], "ready")
        stack.sim.admin("POST", "/cloud/config", json={"operation_delay": 4})
        stack.api("DELETE", f"/instances/{tenant}/{inst['id']}")
        wait_until(
            lambda: any(
                v["status"] == "DELETING" for v in stack.sim_vms() if v["name"] == inst["vm_name"]
            ),
            15,
            what="delete in progress",
        )
        target = "retired"
    else:
        if phase == "operation":
            stack.sim.admin("POST", "/cloud/config", json={"operation_delay": 4})
            waiting = "provisioning"
        else:
            stack.sim.admin("POST", "/guests/config", json={"boot_delay": 4})
            waiting = "initializing"
        inst = stack.provision(tenant)
        stack.wait_status(tenant, inst["id"], waiting)
        target = "ready"
    stack.kill("worker")
    time.sleep(1)
    stack.start_worker()
    stack.wait_status(tenant, inst["id"], target, timeout=60)
    expected = 0 if target == "retired" else 1
    assert len(live_vms(stack, inst["vm_name"])) == expected
    created = [
        e
        for e in stack.sim.admin("GET", "/cloud/log")
        if e["event"] == "created" and e["name"] == inst["vm_name"]
    ]
    assert len(created) == 1


# --- secrets never leak --------------------------------------------------------------------------


def test_canary_secrets_appear_nowhere(stack, migrated_database_url, redis_url):
    tenant = tenant_name("canary")
    claude = "sk-ant-oat01-CANARY" + secrets.token_hex(12)
    nks = "nks-CANARY-" + secrets.token_hex(12)
    stack.onboard(tenant, claude_token=claude, nks_pat=nks)
    responses = []
    inst = stack.provision(tenant)
    stack.wait_status(tenant, inst["id"], "ready")
    for path in (
        f"/instances/{tenant}/{inst['id']}",
        f"/instances/{tenant}/{inst['id']}/events",
        f"/instances?tenant={tenant}",
    ):
        responses.append(stack.api("GET", path).text)
    canaries = [claude, nks, claude[13:30], nks[4:20], "ghp_" + "x" * 20]

    blobs = ["\n".join(responses), stack.logs()]
    r = redis.Redis.from_url(redis_url)
    for key in r.scan_iter(count=1000):
        kind = r.type(key).decode()
        if kind == "string":
            blobs.append(repr(r.get(key)))
        elif kind == "list":
            blobs.append(repr(r.lrange(key, 0, -1)))
        elif kind == "hash":
            blobs.append(repr(r.hgetall(key)))
        elif kind == "zset":
            blobs.append(repr(r.zrange(key, 0, -1)))
        blobs.append(repr(key))
    with psycopg.connect(migrated_database_url) as conn:
        tables = [
            row[0]
            for row in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        ]
        for table in tables:
            for row in conn.execute(f'SELECT * FROM "{table}"'):  # noqa: S608 - our table names
                blobs.append(repr(row))
    haystack = "\n".join(blobs)
    for canary in canaries:
        assert canary not in haystack
