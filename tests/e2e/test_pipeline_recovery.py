"""The pipeline's recovery paths end to end (gunicorn gateway, Celery worker, Redis, Postgres,
OpenBao, the simulators): a VM of ours that already exists by name is adopted, and an error no step
expected does not end the instance's chain of messages."""

import secrets

import psycopg

from shared.domain.labels import managed_labels


def tenant_name(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


def vms_named(stack, name: str) -> list[dict]:
    return [v for v in stack.sim_vms() if v["name"] == name and v["status"] != "DELETING"]


def test_a_vm_of_ours_already_named_like_the_row_is_adopted_not_duplicated(stack):
    tenant = tenant_name("adopt")
    stack.onboard(tenant)
    stack.terminate("worker")  # nobody creates the VM until it exists behind our back
    try:
        inst = stack.provision(tenant)
        labels = {**managed_labels(stack.env["DARK_DEPLOYMENT"]), "instance": inst["id"]}
        ours = stack.sim.admin(
            "POST",
            "/cloud/vms",
            json={
                "name": inst["vm_name"],
                "folder_id": stack.env["YC_FOLDER_ID"],
                "labels": labels,
            },
        )
    finally:
        stack.start_worker()

    ready = stack.wait_status(tenant, inst["id"], "ready")
    assert ready["provider_id"] == ours["id"]
    assert [v["id"] for v in vms_named(stack, inst["vm_name"])] == [ours["id"]]
    creates = [
        e
        for e in stack.sim.admin("GET", "/cloud/log")
        if e["event"] == "created" and e["name"] == inst["vm_name"]
    ]
    assert len(creates) == 1, "only the VM made behind our back was ever created"
    events = stack.api("GET", f"/instances/{tenant}/{inst['id']}/events").json()["items"]
    assert [e["reason"] for e in events if "adopted" in e["reason"]] == [
        f"adopted the existing VM {ours['id']} named {inst['vm_name']}"
    ]


def test_an_error_no_step_expected_is_retried_and_the_instance_still_ends_ready(stack):
    tenant = tenant_name("unexpected")
    stack.onboard(tenant)
    fault = f"fault_{secrets.token_hex(4)}"
    # The first time one of this tenant's rows leaves `pending`, Postgres raises an error that is
    # neither a lost connection nor anything the pipeline classifies (a sequence is not rolled
    # back with the failed statement, so it fires exactly once).
    with psycopg.connect(stack.env["DATABASE_URL"], autocommit=True) as conn:
        conn.execute(f"CREATE SEQUENCE {fault}_once")
        conn.execute(
            f"CREATE FUNCTION {fault}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
            f" IF nextval('{fault}_once') = 1 THEN RAISE EXCEPTION 'injected fault'; END IF;"
            " RETURN NEW; END $$"
        )
        conn.execute(
            f"CREATE TRIGGER {fault} BEFORE UPDATE OF status ON instances FOR EACH ROW"
            f" WHEN (NEW.tenant = '{tenant}' AND OLD.status = 'pending') EXECUTE FUNCTION {fault}()"
        )
    try:
        inst = stack.provision(tenant)
        stack.wait_status(tenant, inst["id"], "ready", timeout=45)
    finally:
        with psycopg.connect(stack.env["DATABASE_URL"], autocommit=True) as conn:
            conn.execute(f"DROP TRIGGER IF EXISTS {fault} ON instances")
            conn.execute(f"DROP FUNCTION IF EXISTS {fault}()")
            conn.execute(f"DROP SEQUENCE IF EXISTS {fault}_once")
    assert len(vms_named(stack, inst["vm_name"])) == 1
    retried = [
        line
        for line in stack.logs().splitlines()
        if "unexpected error, retrying" in line and inst["id"] in line
    ]
    assert retried and all("injected fault" in line for line in retried)
