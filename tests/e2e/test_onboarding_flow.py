"""Issue 4 end to end: a tenant onboards over HTTP, and the gateway provisions for it; offboarding
is refused while the tenant has a live VM and, once forced, the gateway refuses the tenant.

No step of these tests touches Vault directly: secrets go in through the onboarding service only.
"""

import secrets

import pytest
import requests

ONBOARDING_TOKEN = "onb-e2e-" + secrets.token_hex(12)


@pytest.fixture(scope="module")
def onboarding(stack):
    url = stack.start_onboarding(ONBOARDING_TOKEN)
    yield url
    stack.terminate("onboarding")


def onboard_over_http(url: str, tenant: str) -> requests.Response:
    return requests.put(
        f"{url}/tenants/{tenant}/secrets",
        headers={"Authorization": f"Bearer {ONBOARDING_TOKEN}"},
        json={
            "claude_oauth_token": "sk-ant-oat01-" + secrets.token_urlsafe(32),
            "nks_pat": "nks-" + secrets.token_urlsafe(16),
            "forges": [{"name": "github", "host": "github.com", "token": "ghp_" + "y" * 24}],
        },
        timeout=10,
    )


def offboard(url: str, tenant: str, **params) -> requests.Response:
    return requests.delete(
        f"{url}/tenants/{tenant}/secrets",
        headers={"Authorization": f"Bearer {ONBOARDING_TOKEN}"},
        params=params,
        timeout=10,
    )


def test_onboarded_over_http_then_provisioned_to_ready_then_offboarded(stack, onboarding):
    tenant = f"flow-{secrets.token_hex(4)}"
    assert onboard_over_http(onboarding, tenant).status_code == 204

    tenants = {t["name"]: t for t in stack.api("GET", "/tenants").json()["items"]}
    assert tenants[tenant]["onboarded"] is True

    inst = stack.wait_status(tenant, stack.provision(tenant)["id"], "ready")
    assert inst["address"]

    live = offboard(onboarding, tenant)
    assert live.status_code == 409
    assert offboard(onboarding, tenant, force="true").status_code == 204

    refused = stack.api("POST", "/instances", json={"tenant": tenant})
    assert refused.status_code == 409
    assert refused.json()["error"]["code"] == "tenant_not_onboarded"
    assert "not onboarded" in refused.json()["error"]["message"]


def test_tokens_do_not_cross_between_the_two_services(stack, onboarding):
    tenant = f"cross-{secrets.token_hex(4)}"
    with_gateway_token = requests.put(
        f"{onboarding}/tenants/{tenant}/secrets",
        headers={"Authorization": f"Bearer {stack.api_token}"},
        json={"claude_oauth_token": "sk-ant-oat01-" + "a" * 40, "nks_pat": "p", "forges": []},
        timeout=10,
    )
    assert with_gateway_token.status_code == 401
    with_onboarding_token = requests.get(
        f"{stack.api_url}/instances",
        headers={"Authorization": f"Bearer {ONBOARDING_TOKEN}"},
        timeout=10,
    )
    assert with_onboarding_token.status_code == 401
