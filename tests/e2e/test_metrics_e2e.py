"""Issue 6, acceptance 3: /metrics on the real gateway (gunicorn, two workers) parses as Prometheus
text, and its counters move after a provision through the real worker and simulators.

The scrapes carry the operator token (the loopback exemption is off unless set). The fleet figures
are computed at most every 15 s in each worker, so the test scrapes until they show the provision.
"""

import secrets

import requests

from tests.support.processes import wait_until
from tests.support.prometheus import parse, total

READY = {"from_status": "initializing", "to_status": "ready"}


def scrape(stack) -> dict:
    resp = requests.get(stack.api_url + "/metrics", headers=stack.headers(), timeout=10)
    assert resp.status_code == 200, resp.text
    return parse(resp.text)


def test_a_provision_moves_the_transition_and_step_duration_metrics(stack):
    tenant = f"metrics-{secrets.token_hex(4)}"
    stack.onboard(tenant)
    before = scrape(stack)

    instance = stack.provision(tenant)
    stack.wait_status(tenant, instance["id"], "ready")

    def moved_in(families, name, **labels):
        return total(families, name, **labels) - total(before, name, **labels)

    def showing_the_provision():
        families = scrape(stack)
        return families if moved_in(families, "dark_instance_transitions_total", **READY) else None

    after = wait_until(showing_the_provision, 45, interval=1, what="the figures to refresh")

    def moved(name, **labels):
        return moved_in(after, name, **labels)

    assert moved("dark_instance_transitions_total", **READY) >= 1
    for step in ("pending", "provisioning", "initializing"):
        assert moved("dark_instance_status_duration_seconds_count", status=step) >= 1, step
    assert moved("dark_instances", status="ready") >= 1
    assert moved("dark_http_requests_total", method="POST", route="/instances", status="202") == 1
    assert total(after, "dark_metrics_db_up") == 1
    unauthenticated = requests.get(stack.api_url + "/metrics", timeout=10)
    assert unauthenticated.status_code == 401, "loopback needs the token unless the stack opens it"
