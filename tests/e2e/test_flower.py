"""Issue 6, acceptance 2: Flower behind basic auth, on loopback, watching the real worker.

Flower, the gateway and a provisioner worker run as real processes on Redis; a provision goes
through the gateway, and Flower's API is read with the generated credentials, and without them.
"""

import json
import secrets

import pytest
import requests

from shared.celery_app import TASK_PROVISION
from tests.support.processes import wait_until


@pytest.fixture(scope="module")
def flower(stack):
    credentials = "admin:" + secrets.token_urlsafe(16)
    url = stack.start_flower(credentials)
    yield url, tuple(credentials.split(":", 1))
    stack.terminate("flower")


def api(url: str, path: str, **kwargs) -> requests.Response:
    return requests.get(url + path, timeout=15, **kwargs)


def test_flower_with_the_credentials_shows_the_worker_and_the_provision_task(stack, flower):
    url, auth = flower
    tenant = f"flower-{secrets.token_hex(4)}"
    claude_token, nks_pat = stack.onboard(tenant)
    instance = stack.provision(tenant)
    stack.wait_status(tenant, instance["id"], "ready")

    def worker_listed():
        workers = api(url, "/api/workers", params={"refresh": "true"}, auth=auth).json()
        return workers if stack.nodenames["worker"] in workers else None

    workers = wait_until(worker_listed, 30, interval=0.5, what="Flower to list the worker")
    assert workers[stack.nodenames["worker"]]["stats"]["pool"]["max-concurrency"] == 2

    def provision_tasks():
        resp = api(url, "/api/tasks", params={"taskname": TASK_PROVISION}, auth=auth)
        assert resp.status_code == 200, resp.text
        mine = {tid: t for tid, t in resp.json().items() if instance["id"] in (t.get("args") or "")}
        return mine if any(t["state"] == "SUCCESS" for t in mine.values()) else None

    tasks = wait_until(provision_tasks, 30, interval=0.5, what="Flower to see the provision task")
    assert {t["name"] for t in tasks.values()} == {TASK_PROVISION}
    assert {t["worker"] for t in tasks.values() if t.get("worker")} == {stack.nodenames["worker"]}
    # Tasks carry ids only: nothing Flower shows holds a secret of the tenant.
    shown = json.dumps(tasks)
    assert claude_token not in shown and nks_pat not in shown

    resp = stack.api("DELETE", f"/instances/{tenant}/{instance['id']}", params={"mode": "retire"})
    assert resp.status_code == 202, resp.text
    stack.wait_status(tenant, instance["id"], "retired")


@pytest.mark.parametrize("path", ["/api/workers", "/api/tasks", "/api/task/info/x", "/"])
def test_flower_without_credentials_answers_401(flower, path):
    url, _ = flower
    assert api(url, path).status_code == 401


def test_flower_with_wrong_credentials_answers_401(flower):
    url, (user, _) = flower
    assert api(url, "/api/workers", auth=(user, "not-the-password")).status_code == 401
    assert api(url, "/api/workers", auth=(user + "x", "")).status_code == 401
