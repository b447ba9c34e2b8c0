"""Helpers for the onboarding service's tests: canary secrets, a checking test client, cleanup.

Every secret value a test submits is a canary, remembered in SUBMITTED; `Api` fails the test as
soon as a response (body or headers) holds any of them.
"""

import secrets
from urllib.parse import quote

from shared.adapters.vault_kv import tenant_secret_path
from shared.settings import load_settings

TOKEN = "onboarding-test-" + secrets.token_hex(8)
API_TOKEN = "gateway-test-" + secrets.token_hex(8)
# Every secret value any test sent; no response or log line may ever hold one.
SUBMITTED: set[str] = {TOKEN, API_TOKEN}
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


def canary(prefix: str) -> str:
    value = f"{prefix}canary{secrets.token_hex(16)}"
    SUBMITTED.add(value)
    return value


def forge(**overrides) -> dict:
    return {"name": "github", "host": "github.com", "token": canary("ghp_"), **overrides}


def secrets_body(**overrides) -> dict:
    return {
        "claude_oauth_token": canary("sk-ant-oat01-"),
        "nks_pat": canary("nks-"),
        "forges": [forge(), forge(name="gitea", host="Git.Example.org:3000")],
        **overrides,
    }


def path_of(tenant: str) -> str:
    return f"/tenants/{quote(tenant, safe='')}/secrets"


class Api:
    """A Flask test client that authenticates by default and checks every response."""

    def __init__(self, app, token: str | None = TOKEN) -> None:
        self.client = app.test_client()
        self.token = token

    def __call__(self, method: str, path: str, **kwargs):
        headers = dict(kwargs.pop("headers", {}))
        if self.token:
            headers.setdefault("Authorization", f"Bearer {self.token}")
        resp = self.client.open(path, method=method, headers=headers, **kwargs)
        text = resp.get_data(as_text=True) + str(resp.headers)
        assert resp.status_code != 500, text
        assert resp.headers.get("X-Request-Id"), "every response carries a request id"
        for name, value in SECURITY_HEADERS.items():
            assert resp.headers.get(name) == value
        if resp.status_code == 204:
            assert resp.get_data() == b""
        elif path.startswith("/tenants/"):
            assert resp.is_json, text
            assert resp.headers["Cache-Control"] == "no-store"
        for value in SUBMITTED:
            assert value not in text
        return resp

    def put(self, tenant: str, body: dict, **kwargs):
        return self("PUT", path_of(tenant), json=body, **kwargs)

    def get(self, tenant: str, **kwargs):
        return self("GET", path_of(tenant), **kwargs)

    def delete(self, tenant: str, query: str = "", **kwargs):
        return self("DELETE", path_of(tenant) + query, **kwargs)


def error_of(resp) -> dict:
    body = resp.get_json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message", "details"}
    return body["error"]


def stored(raw, tenant: str) -> dict:
    """What OpenBao holds for the tenant, read straight through hvac (InvalidPath when nothing)."""
    response = raw.secrets.kv.v2.read_secret_version(
        tenant_secret_path(tenant), raise_on_deleted_version=True
    )
    return {**response["data"]["data"], "version": response["data"]["metadata"]["version"]}


def onboard(api: Api, tenant: str) -> dict:
    body = secrets_body()
    assert api.put(tenant, body).status_code == 204
    return body


def settings_for(bao, database_url: str):
    return load_settings(
        {
            "DATABASE_URL": database_url,
            "VAULT_ADDR": bao.addr,
            "VAULT_TOKEN": bao.token,
            "DARK_ONBOARDING_TOKENS": TOKEN,
            "DARK_API_TOKENS": API_TOKEN,
        }
    )


def forget_tenants(raw, pool, prefix: str) -> None:
    """Remove what tests left for tenants named `prefix...`: Vault keys, tenant and fleet rows."""
    listed = raw.secrets.kv.v2.list_secrets("tenants")["data"]["keys"]
    for key in listed:
        if key.startswith(quote(prefix, safe="")):
            raw.secrets.kv.v2.delete_metadata_and_all_versions(f"tenants/{key}")
    with pool.connection() as conn:
        conn.execute("DELETE FROM tenants WHERE name LIKE %s", (f"{prefix}%",))
        conn.execute("DELETE FROM instances WHERE tenant LIKE %s", (f"{prefix}%",))
