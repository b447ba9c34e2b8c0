"""The onboarding page in headless Chromium (Playwright, the system's /usr/bin/chromium) against
the onboarding service running under gunicorn, with OpenBao and Postgres behind it.
"""

import secrets
from pathlib import Path

import pytest
import requests
from playwright.sync_api import expect

from tests.support.browser import ARTIFACTS
from tests.support.onboarding import SUBMITTED, TOKEN, canary, forget_tenants
from tests.support.processes import VENV_BIN, free_port, spawn, stop_process, wait_until

PREFIX = f"onbpage-{secrets.token_hex(4)}"
EXPECTED_HTTP_ERROR = "Failed to load resource: the server responded with a status of 4"
SECRET_INPUTS = ["#claude_oauth_token", "#nks_pat", "#forge-0-token", "#forge-1-token"]


def tenant_name(label: str) -> str:
    return f"{PREFIX}-{label}-{secrets.token_hex(3)}"


@pytest.fixture(scope="module")
def service(tmp_path_factory, openbao, migrated_database_url, pg_pool):
    """gunicorn serving the onboarding service; yields (base URL, log file)."""
    port = free_port()
    log_path = tmp_path_factory.mktemp("onboarding") / "onboarding.log"
    proc = spawn(
        [
            str(VENV_BIN / "gunicorn"),
            "-c",
            "services/onboarding/gunicorn.conf.py",
            "services.onboarding.wsgi:app",
        ],
        env={
            "DATABASE_URL": migrated_database_url,
            "VAULT_ADDR": openbao.addr,
            "VAULT_TOKEN": openbao.token,
            "DARK_ONBOARDING_TOKENS": TOKEN,
            "DARK_ONBOARDING_BIND": f"127.0.0.1:{port}",
            "DARK_LOG_LEVEL": "DEBUG",
            "PYTHONUNBUFFERED": "1",
        },
        log_path=log_path,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: requests.get(url + "/health", timeout=1).ok, 30, what="onboarding")
        yield url, log_path
    finally:
        stop_process(proc)
        forget_tenants(openbao.client(), pg_pool, PREFIX)


@pytest.fixture
def page(browser, service):
    """A fresh page on the onboarding form; fails the test on any console error (a CSP
    violation shows there) other than Chromium's note on each 4xx answer the test provokes."""
    url, _ = service
    context = browser.new_context()
    page = context.new_page()
    console_errors: list[str] = []

    def on_console(msg) -> None:
        if msg.type == "error" and not msg.text.startswith(EXPECTED_HTTP_ERROR):
            console_errors.append(msg.text)

    page.on("console", on_console)
    page.on("pageerror", lambda exc: console_errors.append(str(exc)))
    page.goto(url + "/")
    yield page
    context.close()
    assert console_errors == []


def fill_form(page, tenant: str, claude: str, token: str = TOKEN) -> dict[str, str]:
    values = {
        "#token": token,
        "#tenant": tenant,
        "#claude_oauth_token": claude,
        "#nks_pat": canary("nks-"),
        "#forge-0-name": "github",
        "#forge-0-host": "github.com",
        "#forge-0-token": canary("ghp_"),
    }
    for selector, value in values.items():
        page.fill(selector, value)
    return values


def status_over_http(url: str, tenant: str) -> requests.Response:
    return requests.get(
        f"{url}/tenants/{tenant}/secrets",
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=10,
    )


def test_saving_shows_the_status_and_clears_the_secret_inputs(page, service):
    url, log_path = service
    tenant = tenant_name("save")
    fill_form(page, tenant, canary("sk-ant-oat01-"))

    page.click("#save")

    page.wait_for_selector("#status:not([hidden])", timeout=15_000)
    assert page.text_content("#status-tenant") == tenant
    assert page.text_content("#status-version") == "1"
    assert page.text_content("#status-claude_oauth_token") == "set"
    assert page.text_content("#status-nks_pat") == "set"
    assert page.text_content("#status-forges") == "github"
    assert page.text_content("#status-updated").endswith("Z")
    for selector in SECRET_INPUTS:
        assert page.input_value(selector) == "", selector
    for selector in ("#token", "#claude_oauth_token", "#nks_pat", "#forge-0-token"):
        assert page.get_attribute(selector, "type") == "password"
        assert page.get_attribute(selector, "autocomplete") in ("off", "new-password")
    assert all(not text for text in page.locator(".error").all_text_contents())
    page.screenshot(path=str(ARTIFACTS / "onboarding.png"), full_page=True)

    # The page told the truth: the service has version 1 of what was typed in.
    resp = status_over_http(url, tenant)
    assert resp.status_code == 200
    assert resp.json()["version"] == 1

    # Saving again is version 2.
    page.fill("#claude_oauth_token", canary("sk-ant-oat01-"))
    page.fill("#nks_pat", canary("nks-"))
    page.fill("#forge-0-token", canary("ghp_"))
    page.click("#save")
    expect(page.locator("#status-version")).to_have_text("2")

    # A fresh page shows it with "check status", from the token and the tenant alone.
    page.reload()
    assert page.is_hidden("#status")
    page.fill("#token", TOKEN)
    page.fill("#tenant", tenant)
    page.click("#check")
    expect(page.locator("#status-version")).to_have_text("2")
    assert page.text_content("#status-forges") == "github"
    assert_no_secret_in(log_path)


def test_a_bad_claude_token_shows_its_error_next_to_the_field(page, service):
    url, log_path = service
    tenant = tenant_name("bad")
    bad_token = canary("sk-ant-api03-")
    fill_form(page, tenant, bad_token)
    # A bad host in the second row: the forge index the API reports maps back to the row.
    page.fill("#forge-1-name", "gitea")
    page.fill("#forge-1-host", "https://git.example.org")
    page.fill("#forge-1-token", canary("gitea-"))

    page.click("#save")

    expect(page.locator("#error-claude_oauth_token")).not_to_be_empty()
    claude_error = page.text_content("#error-claude_oauth_token")
    assert "sk-ant-oat01-" in claude_error
    assert bad_token not in claude_error
    assert page.get_attribute("#claude_oauth_token", "aria-invalid") == "true"
    assert "host name" in page.text_content("#error-forges-1-host")
    assert page.text_content("#error-nks_pat") == ""
    assert page.text_content("#error-forges-0-host") == ""
    assert page.is_hidden("#status")
    # Nothing was saved, and what was typed is still there to be corrected.
    assert page.input_value("#claude_oauth_token") == bad_token
    assert status_over_http(url, tenant).status_code == 404
    assert_no_secret_in(log_path)


def test_a_wrong_onboarding_token_is_shown_at_the_token_field(page, service):
    url, _ = service
    tenant = tenant_name("token")
    fill_form(page, tenant, canary("sk-ant-oat01-"), token=canary("not-a-token-"))

    page.click("#save")

    expect(page.locator("#error-token")).not_to_be_empty()
    assert "token" in page.text_content("#error-token")
    assert page.is_hidden("#status")
    assert status_over_http(url, tenant).status_code == 404


def assert_no_secret_in(log_path: Path) -> None:
    logs = log_path.read_text(errors="replace")
    assert '"msg": "http method=PUT' in logs, "the request log line is written"
    for value in SUBMITTED:
        assert value not in logs
