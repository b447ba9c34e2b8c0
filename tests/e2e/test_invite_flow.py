"""An invite from start to finish in headless Chromium, on the real stack (gunicorn gateway and
onboarding service, a Celery worker, Redis, Postgres, OpenBao, the simulators): the operator
invites from the dashboard, the tenant opens the link and onboards on the page, the operator
provisions and the VM becomes ready; the same link's token on another tenant's path is a 404.
"""

import secrets

import pytest
import requests

from tests.support.onboarding import canary
from tests.support.processes import free_port
from tests.support.stack import make_stack

READY_TIMEOUT_MS = 60_000

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def invite_stack(tmp_path_factory, e2e_sim, openbao, migrated_database_url, redis_url):
    """The gateway links invites to this module's onboarding service."""
    port = free_port()
    s = make_stack(
        tmp_path_factory.mktemp("invites"),
        e2e_sim,
        openbao,
        migrated_database_url,
        redis_url,
        DARK_ONBOARDING_PUBLIC_URL=f"http://127.0.0.1:{port}",
    )
    s.start_api()
    s.start_worker()
    onboarding_url = s.start_onboarding("onboarding-admin-" + secrets.token_hex(8), port=port)
    yield s, onboarding_url
    s.stop()


def watch_for_problems(page, problems: list[str]) -> None:
    page.on("pageerror", lambda error: problems.append(f"script error: {error}"))
    page.on(
        "console",
        lambda msg: problems.append(msg.text) if "Content Security Policy" in msg.text else None,
    )


def test_the_operator_invites_and_the_tenant_onboards_with_the_link(invite_stack, browser):
    from playwright.sync_api import expect

    stack, onboarding_url = invite_stack
    tenant = f"inv-{secrets.token_hex(4)}"
    problems: list[str] = []

    # The operator invites from the dashboard: the link is shown once.
    operator = browser.new_context(base_url=stack.api_url, viewport={"width": 1360, "height": 900})
    operator.set_default_timeout(15_000)
    dashboard = operator.new_page()
    watch_for_problems(dashboard, problems)
    dashboard.goto("/ui/")
    dashboard.fill("#token", stack.api_token)
    dashboard.click("form button[type=submit]")
    dashboard.fill("#invite-tenant", tenant)
    dashboard.click("#invite-submit")
    expect(dashboard.locator("#invite-result")).to_be_visible()
    link = dashboard.locator("#invite-url").input_value()
    assert link.startswith(f"{onboarding_url}/#token=")
    token = link.split("#token=", 1)[1]
    tenant_row = dashboard.locator("#tenants tr", has_text=tenant)
    expect(tenant_row).to_contain_text("pending until")

    # The tenant opens the link in a browser of its own and onboards.
    guest = browser.new_context(viewport={"width": 1000, "height": 900})
    guest.set_default_timeout(15_000)
    page = guest.new_page()
    watch_for_problems(page, problems)
    page.goto(link)
    expect(page.locator("#invite-tenant")).to_have_text(tenant)
    expect(page.locator("#tenant")).to_have_value(tenant)
    assert page.get_attribute("#tenant", "readonly") is not None
    expect(page.locator("#token-field")).to_be_hidden()
    assert "#" not in page.url and token not in page.url
    expect(page.locator("#message")).to_have_text("Nothing is stored for this tenant yet.")
    page.fill("#claude_oauth_token", canary("sk-ant-oat01-"))
    page.fill("#nks_pat", canary("nks-"))
    page.fill("#forge-0-name", "github")
    page.fill("#forge-0-host", "github.com")
    page.fill("#forge-0-token", canary("ghp_"))
    page.click("#save")
    expect(page.locator("#status")).to_be_visible()
    expect(page.locator("#status-tenant")).to_have_text(tenant)
    expect(page.locator("#status-claude_oauth_token")).to_have_text("set")

    # The operator sees the invite used, provisions, and the VM becomes ready.
    expect(tenant_row).to_contain_text("used", timeout=15_000)
    expect(dashboard.locator(f'#provision-tenant option[value="{tenant}"]')).to_have_count(1)
    dashboard.select_option("#provision-tenant", tenant)
    dashboard.click("#provision-submit")
    message = dashboard.locator("#provision-message")
    expect(message).to_contain_text(f"for {tenant}")
    instance_id = message.locator("a").get_attribute("href").rsplit("/", 1)[1]
    row = dashboard.locator(f'#fleet tr[data-id="{instance_id}"]')
    expect(row.locator(".badge")).to_have_text("ready", timeout=READY_TIMEOUT_MS)

    # The same link on another tenant's path: as if that tenant did not exist.
    other = f"inv-other-{secrets.token_hex(4)}"
    stack.onboard(other)
    for name in (other, f"inv-none-{secrets.token_hex(4)}"):
        resp = requests.get(
            f"{onboarding_url}/tenants/{name}/secrets",
            headers={"Authorization": f"Bearer {token}"},
            timeout=10,
        )
        assert resp.status_code == 404
        assert resp.json()["error"]["code"] == "not_onboarded"
    # Nor does the token open the gateway.
    assert (
        requests.get(
            f"{stack.api_url}/tenants", headers={"Authorization": f"Bearer {token}"}, timeout=10
        ).status_code
        == 401
    )

    operator.close()
    guest.close()
    assert problems == []
    logs = stack.logs()
    assert token not in logs
    assert "#token" not in logs
