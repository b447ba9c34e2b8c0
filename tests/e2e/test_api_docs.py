"""/docs on both services in headless Chromium: Swagger UI renders each service's operations from
its /openapi.json, under the services' policy, with no CSP violation and no script error."""

import pytest

from tests.support.browser import ARTIFACTS

pytestmark = pytest.mark.slow

ONBOARDING_TOKEN = "onb-docs-test-token"
# Every violation the page sees, from the page itself (console messages can be worded anyhow).
RECORD_VIOLATIONS = """
window.__violations = [];
document.addEventListener("securitypolicyviolation", (event) => {
  window.__violations.push(`${event.violatedDirective} ${event.blockedURI}`);
});
"""


@pytest.fixture(scope="module")
def services(stack):
    onboarding_url = stack.start_onboarding(ONBOARDING_TOKEN)
    return {"gateway": stack.api_url, "onboarding": onboarding_url}


@pytest.mark.parametrize(
    "service,operation",
    [
        ("gateway", "/instances/{tenant}/{instance_id}/heal"),
        ("onboarding", "/tenants/{tenant}/secrets"),
    ],
)
def test_docs_renders_the_operations_with_no_csp_violation(browser, services, service, operation):
    context = browser.new_context()
    context.add_init_script(RECORD_VIOLATIONS)
    problems: list[str] = []
    page = context.new_page()
    page.on("pageerror", lambda error: problems.append(f"script error: {error}"))
    page.on(
        "console",
        lambda message: (
            problems.append(message.text)
            if "Content Security Policy" in message.text or message.type == "error"
            else None
        ),
    )
    try:
        page.goto(services[service] + "/docs")
        page.wait_for_selector(f'.opblock-summary-path[data-path="{operation}"]', timeout=15_000)
        assert page.locator(".opblock").count() > 3
        page.screenshot(path=str(ARTIFACTS / f"docs-{service}.png"), full_page=True)
        violations = page.evaluate("window.__violations")
    finally:
        context.close()
    assert violations == []
    assert problems == []
