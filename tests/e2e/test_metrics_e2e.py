"""Issue 6, acceptance 3: /metrics on the real gateway (gunicorn, two workers) parses as Prometheus
text, and its counters move after a provision through the real worker and simulators."""

import secrets

import requests

from tests.support.prometheus import parse, total


def scrape(stack) -> dict:
    # From loopback, as a Prometheus on the gateway's host scrapes it: no token.
    resp = requests.get(stack.api_url + "/metrics", timeout=10)
    assert resp.status_code == 200, resp.text
    return parse(resp.text)


def test_a_provision_moves_the_transition_and_step_duration_metrics(stack):
    tenant = f"metrics-{secrets.token_hex(4)}"
    stack.onboard(tenant)
    before = scrape(stack)

    instance = stack.provision(tenant)
    stack.wait_status(tenant, instance["id"], "ready")
    after = scrape(stack)

    def moved(name, **labels):
        return total(after, name, **labels) - total(before, name, **labels)

    ready = {"from_status": "initializing", "to_status": "ready"}
    assert moved("dark_instance_transitions_total", **ready) >= 1
    for step in ("pending", "provisioning", "initializing"):
        assert moved("dark_instance_status_duration_seconds_count", status=step) >= 1, step
    assert moved("dark_instances", status="ready") >= 1
    assert moved("dark_http_requests_total", method="POST", route="/instances", status="202") == 1
    assert total(after, "dark_metrics_db_up") == 1
