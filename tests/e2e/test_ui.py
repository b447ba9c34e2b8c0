"""The operator dashboard in headless Chromium (Playwright, the system's /usr/bin/chromium) on the
real stack: gunicorn gateway (2 workers), Celery worker, Redis, Postgres, OpenBao, simulators.

Screenshots of the dashboard and of the VM page go to test-artifacts/ (git-ignored).
"""

import contextlib
import re
import secrets
import time
import uuid
from urllib.parse import urlsplit

import pytest

from tests.conftest import PG_ADMIN_DSN
from tests.support.browser import ARTIFACTS
from tests.support.processes import wait_until
from tests.support.stack import make_stack, private_database

READY_TIMEOUT_MS = 60_000

pytestmark = pytest.mark.slow

# Records every status the row of `id` shows, so the test can tell a live update from a reload.
WATCH_ROW = """(id) => {
  window.__statusesSeen = [];
  const record = () => {
    const badge = document.querySelector(`#fleet tr[data-id="${id}"] .badge`);
    const seen = window.__statusesSeen;
    if (badge && seen[seen.length - 1] !== badge.textContent) seen.push(badge.textContent);
  };
  new MutationObserver(record).observe(document.getElementById("fleet"), {
    subtree: true, childList: true, characterData: true,
  });
  record();
}"""


# Counts the page's fetches under way (window.__fetchesUnderWay), for a test that must know none is.
COUNT_FETCHES = """
window.__fetchesUnderWay = 0;
const originalFetch = window.fetch;
window.fetch = (...args) => {
  window.__fetchesUnderWay += 1;
  return originalFetch(...args).finally(() => { window.__fetchesUnderWay -= 1; });
};
"""


@pytest.fixture(scope="module")
def reconcile_stack(tmp_path_factory, e2e_sim, openbao, redis_url):
    """A gateway and a reconcile worker on a database of their own: reconcile acts on every row
    of its registry, and the module's `stack` shares its database with other modules."""
    with private_database(PG_ADMIN_DSN) as database_url:
        s = make_stack(
            tmp_path_factory.mktemp("ui-reconcile"), e2e_sim, openbao, database_url, redis_url
        )
        s.start_api()
        s.start_reconciler()
        try:
            yield s
        finally:
            s.stop()


@pytest.fixture
def context(browser, stack):
    with browser_context(browser, stack) as context:
        yield context


@contextlib.contextmanager
def browser_context(browser, stack):
    """A fresh browser profile; fails the test on a script error or a CSP violation."""
    context = browser.new_context(base_url=stack.api_url, viewport={"width": 1360, "height": 900})
    context.set_default_timeout(15_000)
    problems: list[str] = []

    def csp_violation(message) -> None:
        if "Content Security Policy" in message.text:
            problems.append(message.text)

    def watch(page) -> None:
        page.on("pageerror", lambda error: problems.append(f"script error: {error}"))
        page.on("console", csp_violation)

    context.on("page", watch)
    try:
        yield context
    finally:
        context.close()
    assert problems == []


def sign_in(page, token: str) -> None:
    page.goto("/ui/")
    page.fill("#token", token)
    page.click("form button[type=submit]")


def wait_for_refresh(page, selector: str) -> None:
    """Until the page's "updated at" line changes (it names the second)."""
    before = page.locator(selector).text_content()
    page.wait_for_function(
        "([sel, text]) => document.querySelector(sel).textContent !== text", arg=[selector, before]
    )


def csrf_token(page) -> str:
    return page.locator('meta[name="csrf-token"]').get_attribute("content")


def test_an_operator_provisions_watches_heals_and_tears_down_a_vm(stack, context):
    from playwright.sync_api import expect

    tenant = f"ui-{secrets.token_hex(4)}"
    claude_token, nks_pat = stack.onboard(tenant)
    page = context.new_page()
    sign_in(page, stack.api_token)
    expect(page.locator("h1")).to_have_text("Fleet")
    expect(page.locator("#health")).to_contain_text("Healthy")

    # Provision from the picker, which offers the onboarded tenant.
    expect(page.locator(f'#provision-tenant option[value="{tenant}"]')).to_have_count(1)
    page.select_option("#provision-tenant", tenant)
    page.click("#provision-submit")
    message = page.locator("#provision-message")
    expect(message).to_contain_text(f"for {tenant}")
    instance_id = message.locator("a").get_attribute("href").rsplit("/", 1)[1]
    page.evaluate(WATCH_ROW, instance_id)

    # Ready without a reload: the same document saw the row move on.
    row = page.locator(f'#fleet tr[data-id="{instance_id}"]')
    expect(row.locator(".badge")).to_have_text("ready", timeout=READY_TIMEOUT_MS)
    seen = page.evaluate("window.__statusesSeen")
    assert seen[-1] == "ready" and len(seen) > 1, seen
    expect(row).to_contain_text(tenant)
    address = stack.instance(tenant, instance_id)["address"]
    expect(row).to_contain_text(address)
    page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True, animations="disabled")

    # Refreshes keep the user's place: the focus, and the filters.
    teardown = row.get_by_role("button", name="Tear down…")
    teardown.focus()
    wait_for_refresh(page, "#fleet-updated")
    assert page.evaluate("document.activeElement.closest('tr').dataset.id") == instance_id
    page.select_option("#filter-status", "failed")
    expect(row).to_have_count(0)
    expect(page.locator("#fleet-empty")).to_have_text("No instance matches these filters.")
    expect(page).to_have_url(re.compile(r"\?status=failed$"))
    page.select_option("#filter-status", "")
    expect(row.locator(".badge")).to_have_text("ready")

    # The VM page: identity, a healthy guest, the way in, the timeline.
    row.locator("a").click()
    expect(page).to_have_url(re.compile(rf"/ui/instances/{tenant}/{instance_id}$"))
    expect(page.locator("#f-address")).to_have_text(address)
    expect(page.locator("#g-status")).to_have_text("ok")
    expect(page.locator("#g-version")).not_to_be_empty()
    expect(page.locator("#guest-banner")).to_be_hidden()
    expect(page.locator("#e-opencode")).to_have_attribute("href", f"http://{address}:4096")
    agent = page.locator("a#e-agent")
    detail = stack.api("GET", f"/instances/{tenant}/{instance_id}").json()
    agent_url = detail["entry_points"]["agent_url"]
    expect(agent).to_have_attribute("href", agent_url)
    expect(agent).to_have_text(agent_url)
    # Init's forge summary: the onboarded forge, with the VM's key registered.
    forge = page.locator("#forges tbody tr")
    expect(forge).to_have_count(1)
    expect(forge).to_have_text(re.compile(r"gh\s*github\.com\s*registered"))
    expect(page.locator("#forges-none")).to_be_hidden()
    expect(page.locator("#e-pubkey")).to_contain_text("ssh-ed25519 ")
    expect(page.locator("#timeline li")).to_have_count(4)
    expect(page.locator("#timeline li").last).to_contain_text("ready")

    # Heal shows the guest's report.
    page.click("#heal")
    expect(page.locator("#heal-report")).to_contain_text("healthy")
    expect(page.locator("#heal-error")).to_be_hidden()
    page.screenshot(path=str(ARTIFACTS / "instance.png"), full_page=True, animations="disabled")
    for shown in (page.content(), page.goto(f"/ui/instances/{tenant}/{instance_id}").text()):
        assert claude_token not in shown and nks_pat not in shown

    # Tear it down from its row: the dialog outlives a refresh, cancelling changes nothing,
    # confirming retires the VM.
    page.click("text=← Fleet")
    teardown.click()
    dialog = page.locator("#teardown-dialog")
    expect(dialog).to_contain_text(tenant)
    wait_for_refresh(page, "#fleet-updated")
    expect(dialog).to_be_visible()
    dialog.get_by_role("button", name="Cancel").click()
    expect(dialog).to_be_hidden()
    assert stack.instance(tenant, instance_id)["status"] == "ready"
    teardown.click()
    dialog.get_by_label("Retire").check()
    dialog.get_by_role("button", name="Tear down").click()
    expect(page.locator("#fleet-message")).to_contain_text("Tearing down")
    expect(row.locator(".badge")).to_have_text("retired", timeout=READY_TIMEOUT_MS)
    expect(teardown).to_be_hidden()
    assert stack.instance(tenant, instance_id)["status"] == "retired"


def test_the_vm_page_says_when_the_guest_cannot_be_reached(stack, context):
    from playwright.sync_api import expect

    tenant = f"ui-down-{secrets.token_hex(4)}"
    stack.onboard(tenant)
    instance = stack.provision(tenant)
    instance = stack.wait_status(tenant, instance["id"], "ready")
    fault = {"vm_id": instance["provider_id"], "mode": "refuse", "seconds": 60}
    stack.sim.admin("POST", "/guests/faults", json=fault)
    page = context.new_page()
    sign_in(page, stack.api_token)
    page.goto(f"/ui/instances/{tenant}/{instance['id']}")
    expect(page.locator("#guest-banner")).to_contain_text("Unreachable")
    expect(page.locator("#guest-facts")).to_be_hidden()
    page.click("#heal")
    expect(page.locator("#heal-error")).to_contain_text("Unreachable")
    page.screenshot(path=str(ARTIFACTS / "instance-unreachable.png"), animations="disabled")
    assert stack.api("DELETE", f"/instances/{tenant}/{instance['id']}").status_code == 202
    stack.wait_status(tenant, instance["id"], "retired")


def test_a_wrong_token_cannot_sign_in(stack, context):
    from playwright.sync_api import expect

    page = context.new_page()
    sign_in(page, "op-" + secrets.token_hex(16))
    expect(page.locator("#sign-in-error")).to_have_text("That token is not valid.")
    page.screenshot(path=str(ARTIFACTS / "sign-in.png"))
    expect(page.locator("#token")).to_be_visible()
    assert context.cookies() == []
    assert page.request.get(stack.api_url + "/instances").status == 401


def test_state_changes_with_the_session_but_without_the_csrf_header_are_refused(stack, context):
    page = context.new_page()
    sign_in(page, stack.api_token)
    assert page.request.get(stack.api_url + "/instances?limit=1").ok  # the session reads
    tenant = f"ui-csrf-{secrets.token_hex(4)}"
    stack.onboard(tenant)

    refused = page.request.post(stack.api_url + "/instances", data={"tenant": tenant})
    assert refused.status == 403
    assert refused.json()["error"]["code"] == "csrf_failed"
    assert stack.api("GET", f"/instances?tenant={tenant}").json()["items"] == []

    path = f"{stack.api_url}/instances/{tenant}/{uuid.uuid4()}"
    assert page.request.delete(path).status == 403
    # The same call with the page's token gets past the check (and finds no such instance).
    passed = page.request.delete(path, headers={"X-CSRF-Token": csrf_token(page)})
    assert passed.status == 404


def test_reconcile_runs_on_request_and_shows_what_it_did(browser, reconcile_stack):
    from playwright.sync_api import expect

    stack = reconcile_stack
    with browser_context(browser, stack) as context:
        page = context.new_page()
        sign_in(page, stack.api_token)
        expect(page.locator("#reconcile-empty")).to_have_text("No reconcile run yet.")
        # A fresh deployment: the picker says why it cannot provision yet.
        expect(page.locator("#provision-tenant")).to_have_text("No onboarded tenant yet")
        expect(page.locator("#provision-submit")).to_be_disabled()
        page.check("#reconcile-dry-run")
        page.click("#reconcile-run")
        expect(page.locator("#reconcile-message")).to_contain_text("A dry run was queued")
        run = page.locator("#reconcile-runs details.run").first
        expect(run).to_contain_text("dry run", timeout=30_000)
        expect(run).to_contain_text("nothing to do")
        run.locator("summary").click()
        expect(run).to_contain_text("No action: the cloud and the registry agreed.")
        # The opened run stays open through refreshes.
        wait_for_refresh(page, "#fleet-updated")
        expect(run).to_have_attribute("open", "")
        page.screenshot(path=str(ARTIFACTS / "reconcile.png"), animations="disabled")


def test_signing_out_ends_the_session_for_a_copy_of_the_cookie(stack, browser, context):
    page = context.new_page()
    sign_in(page, stack.api_token)
    assert page.request.get(stack.api_url + "/instances?limit=1").ok
    copied = context.cookies()
    with browser_context(browser, stack) as elsewhere:
        elsewhere.add_cookies(copied)  # a stolen copy, in another browser
        assert elsewhere.request.get(stack.api_url + "/instances?limit=1").ok

        page.click("text=Sign out")
        page.wait_for_selector("#token")
        assert elsewhere.request.get(stack.api_url + "/instances?limit=1").status == 401
        replay = elsewhere.new_page()
        replay.goto("/ui/")
        assert replay.locator("#token").is_visible()  # the sign-in page, not the dashboard


def test_refresh_brings_a_new_vm_in_place_while_the_timers_stand_still(stack, context):
    from playwright.sync_api import expect

    tenant = f"ui-refresh-{secrets.token_hex(4)}"
    stack.onboard(tenant)
    page = context.new_page()
    page.add_init_script(COUNT_FETCHES)
    page.clock.install()
    sign_in(page, stack.api_token)
    expect(page.locator("#fleet-updated")).to_contain_text("Live")
    # From here no timer fires: only the button can bring the new row. A request already under
    # way could still bring it if the gateway answered it after the provision below, and so could
    # one it leads to (the tenants' answer can refresh the fleet): once, on a busy machine, the row
    # came without the button. The provision waits until the page has had nothing under way for
    # a while.
    page.clock.pause_at(page.evaluate("Date.now()") + 1)
    wait_until(lambda: _quiet(page), 10, what="the page's requests to be answered")
    page.evaluate("window.__samePage = true")
    instance = stack.provision(tenant)
    row = page.locator(f'#fleet tr[data-id="{instance["id"]}"]')
    expect(row).to_have_count(0)
    page.click("#fleet-refresh")
    expect(row).to_have_count(1)
    expect(row).to_contain_text(tenant)
    # In place: the same document, not a reload.
    assert page.evaluate("window.__samePage") is True
    assert stack.api("DELETE", f"/instances/{tenant}/{instance['id']}").status_code == 202
    stack.wait_status(tenant, instance["id"], "retired")


def _quiet(page) -> bool:
    if page.evaluate("window.__fetchesUnderWay") != 0:
        return False
    time.sleep(0.3)
    return page.evaluate("window.__fetchesUnderWay") == 0


def test_the_vm_page_says_no_forge_is_registered_and_offers_heal_to_a_failed_vm(stack, context):
    from playwright.sync_api import expect

    tenant = f"ui-forges-{secrets.token_hex(4)}"
    stack.onboard(tenant)
    instance = stack.wait_status(tenant, stack.provision(tenant)["id"], "ready")
    detail_path = f"/instances/{tenant}/{instance['id']}"

    # The gateway's own answer, as a VM that failed with no forge registered would get it.
    def failed_without_forges(route) -> None:
        response = route.fetch()
        detail = response.json()
        detail["instance"] |= {"status": "failed", "reason": "init failed"}
        detail["forges"] = []
        route.fulfill(response=response, json=detail)

    page = context.new_page()
    page.route(lambda url: urlsplit(url).path == detail_path, failed_without_forges)
    sign_in(page, stack.api_token)
    page.goto(f"/ui{detail_path}")
    expect(page.locator("#f-status")).to_have_text("failed")
    expect(page.locator("#forges-none")).to_have_text("none registered")
    expect(page.locator("#forges")).to_be_hidden()
    expect(page.locator("#heal")).to_be_enabled()
    page.click("#heal")
    expect(page.locator("#heal-report")).to_contain_text("healthy")
    expect(page.locator("#heal-error")).to_be_hidden()
    assert stack.api("DELETE", detail_path).status_code == 202
    stack.wait_status(tenant, instance["id"], "retired")
