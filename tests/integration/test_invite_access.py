"""Invites end to end through both services' Flask apps, on their real peers (Postgres, Redis,
OpenBao): the gateway issues and revokes them, the onboarding service lets each work for its own
tenant only; and an authorization matrix over every route both services' OpenAPI documents list,
so that a new route cannot be forgotten.
"""

import json
import logging
import re
import secrets
import threading
import uuid
from datetime import UTC, datetime, timedelta
from urllib.parse import quote

import pytest

from services.api.app import create_app as create_gateway
from services.onboarding.app import create_app as create_onboarding
from shared.adapters.vault_client import vault_client
from shared.adapters.vault_kv import HvacTenantSecrets
from shared.celery_app import make_celery
from shared.domain.invites import token_digest
from shared.logs import JsonFormatter
from shared.settings import load_settings
from tests.support.onboarding import forget_tenants, path_of, secrets_body

PREFIX = f"invacc-{secrets.token_hex(4)}"
API_TOKEN = "gateway-inv-" + secrets.token_hex(8)
ADMIN_TOKEN = "onboarding-inv-" + secrets.token_hex(8)
WRONG_TOKEN = "wrong-inv-" + secrets.token_hex(8)
PUBLIC_URL = "https://onboard.example.test"
TTL_SECS = 3 * 24 * 3600

# Routes anyone may call; a route added to this set is a decision, made here.
GATEWAY_PUBLIC = {("GET", "/health"), ("GET", "/ready"), ("GET", "/openapi.json")}
ONBOARDING_PUBLIC = {("GET", "/"), ("GET", "/health"), ("GET", "/openapi.json")}
CALLERS = ("none", "wrong", "gateway", "admin", "tenant", "expired", "revoked")


def tenant_name(label: str = "t") -> str:
    return f"{PREFIX}-{label}-{secrets.token_hex(3)}"


# --- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def settings(openbao, migrated_database_url, redis_url):
    return load_settings(
        {
            "DATABASE_URL": migrated_database_url,
            "REDIS_URL": redis_url,
            "VAULT_ADDR": openbao.addr,
            "VAULT_TOKEN": openbao.token,
            "DARK_API_TOKENS": API_TOKEN,
            "DARK_ONBOARDING_TOKENS": ADMIN_TOKEN,
            "DARK_ONBOARDING_PUBLIC_URL": PUBLIC_URL,
            "DARK_INVITE_TTL_SECS": str(TTL_SECS),
            "DARK_METRICS_LOOPBACK_OPEN": "false",
        }
    )


@pytest.fixture(scope="module")
def gateway(settings, pg_pool, openbao, redis_url):
    celery_app = make_celery(settings)
    yield create_gateway(settings, celery_app=celery_app)
    celery_app.close()
    forget_tenants(openbao.client(), pg_pool, PREFIX)
    with pg_pool.connection() as conn:
        conn.execute("DELETE FROM invites WHERE tenant LIKE %s", (f"{PREFIX}%",))


@pytest.fixture(scope="module")
def onboarding(settings, gateway):
    return create_onboarding(settings)


def call(app, method: str, path: str, token: str | None = None, **kwargs):
    headers = dict(kwargs.pop("headers", {}))
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    resp = app.test_client().open(path, method=method, headers=headers, **kwargs)
    assert resp.status_code < 500, resp.get_data(as_text=True)
    return resp


def invite(gateway, tenant: str) -> dict:
    resp = call(gateway, "POST", f"/tenants/{quote(tenant, safe='')}/invites", API_TOKEN)
    assert resp.status_code == 201, resp.get_data(as_text=True)
    return resp.get_json()


def expire(pg_pool, token: str) -> None:
    with pg_pool.connection() as conn:
        conn.execute(
            "UPDATE invites SET expires_at = created_at + interval '1 millisecond'"
            " WHERE token_hash = %s",
            (token_digest(token),),
        )


def admin_onboard(onboarding, tenant: str) -> None:
    resp = call(onboarding, "PUT", path_of(tenant), ADMIN_TOKEN, json=secrets_body())
    assert resp.status_code == 204


def tenants_listed(gateway) -> dict[str, dict]:
    resp = call(gateway, "GET", "/tenants", API_TOKEN)
    return {item["name"]: item for item in resp.get_json()["items"]}


def masked(resp, *names: str) -> tuple[int, str]:
    """The status and body with the tenant names in it replaced: the shape of an answer."""
    text = resp.get_data(as_text=True)
    for name in names:
        text = text.replace(json.dumps(name)[1:-1], "<tenant>")
    return resp.status_code, text


def header_names(resp) -> set[str]:
    return {name for name, _ in resp.headers.items() if name != "X-Request-Id"}


# --- the gateway's invite routes -------------------------------------------------------------


def test_an_invite_is_a_token_shown_once_and_a_link_with_it_in_the_fragment(gateway, pg_pool):
    tenant = tenant_name()
    before = datetime.now(UTC)

    resp = call(gateway, "POST", f"/tenants/{tenant}/invites", API_TOKEN)

    assert resp.status_code == 201
    assert resp.headers["Cache-Control"] == "no-store"
    body = resp.get_json()
    assert set(body) == {"token", "url", "expires_at"}
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", body["token"])
    assert body["url"] == f"{PUBLIC_URL}/#token={body['token']}"
    expires = datetime.fromisoformat(body["expires_at"])
    assert before + timedelta(seconds=TTL_SECS) <= expires
    assert expires <= datetime.now(UTC) + timedelta(seconds=TTL_SECS)
    listed = tenants_listed(gateway)[tenant]
    assert listed["onboarded"] is False
    pending = {"state": "pending", "expires_at": body["expires_at"], "used_at": None}
    assert listed["invite"] == pending
    text = call(gateway, "GET", "/tenants", API_TOKEN).get_data(as_text=True)
    assert body["token"] not in text
    assert token_digest(body["token"]).hex() not in text


def test_the_link_defaults_to_the_onboarding_bind(settings, pg_pool):
    local = load_settings(
        {
            "DATABASE_URL": settings.database_url,
            "REDIS_URL": settings.redis_url,
            "DARK_API_TOKENS": API_TOKEN,
            "DARK_ONBOARDING_BIND": "127.0.0.1:18081",
        }
    )
    app = create_gateway(local)

    body = invite(app, tenant_name())

    assert body["url"] == f"http://127.0.0.1:18081/#token={body['token']}"


def test_a_new_invite_replaces_the_previous_one(gateway, onboarding):
    tenant = tenant_name()
    first = invite(gateway, tenant)["token"]

    second = invite(gateway, tenant)["token"]

    assert call(onboarding, "GET", "/whoami", first).status_code == 401
    assert call(onboarding, "GET", "/whoami", second).get_json() == {
        "role": "tenant",
        "tenant": tenant,
    }


def test_revoking_ends_the_invite_and_can_be_repeated(gateway, onboarding):
    tenant = tenant_name()
    token = invite(gateway, tenant)["token"]

    for _ in range(2):
        resp = call(gateway, "DELETE", f"/tenants/{tenant}/invites", API_TOKEN)
        assert resp.status_code == 204
        assert resp.get_data() == b""

    assert call(onboarding, "GET", "/whoami", token).status_code == 401
    # Listed while it has a name anywhere: here only the revoked invite had it.
    assert tenant not in tenants_listed(gateway)


@pytest.mark.parametrize("method", ["POST", "DELETE"])
@pytest.mark.parametrize("bad", [".hidden", "a b", "x" * 64, "tab\there"])
def test_an_invalid_tenant_name_is_422_and_nothing_is_written(gateway, pg_pool, method, bad):
    with pg_pool.connection() as conn:
        before = conn.execute("SELECT count(*) FROM invites").fetchone()[0]

    resp = call(gateway, method, f"/tenants/{quote(bad, safe='')}/invites", API_TOKEN)

    assert resp.status_code == 422
    assert resp.get_json()["error"]["code"] == "invalid_tenant"
    with pg_pool.connection() as conn:
        assert conn.execute("SELECT count(*) FROM invites").fetchone()[0] == before


def test_the_dashboard_invites_with_its_session_and_csrf_token(gateway):
    client = gateway.test_client()
    assert client.post("/ui/sign-in", data={"token": API_TOKEN}).status_code == 303
    with client.session_transaction() as session:
        csrf = session["csrf"]
    tenant = tenant_name("ui")

    refused = client.post(f"/tenants/{tenant}/invites")
    accepted = client.post(f"/tenants/{tenant}/invites", headers={"X-CSRF-Token": csrf})

    assert refused.status_code == 403
    assert accepted.status_code == 201
    assert tenants_listed(gateway)[tenant]["invite"]["state"] == "pending"


# --- the onboarding service with an invite ----------------------------------------------------


def test_an_invite_works_for_its_own_tenant_and_is_marked_used(gateway, onboarding):
    tenant = tenant_name()
    token = invite(gateway, tenant)["token"]

    who = call(onboarding, "GET", "/whoami", token)
    missing = call(onboarding, "GET", path_of(tenant), token)
    put = call(onboarding, "PUT", path_of(tenant), token, json=secrets_body())
    again = call(onboarding, "PUT", path_of(tenant), token, json=secrets_body(forges=[]))
    got = call(onboarding, "GET", path_of(tenant), token)

    assert who.get_json() == {"role": "tenant", "tenant": tenant}
    assert missing.status_code == 404
    assert (put.status_code, again.status_code) == (204, 204)
    assert got.status_code == 200
    assert got.get_json()["version"] == 2
    listed = tenants_listed(gateway)[tenant]
    assert listed["onboarded"] is True
    assert listed["invite"]["state"] == "used"
    assert listed["invite"]["used_at"] is not None


def test_a_tenant_token_cannot_offboard_even_its_own_tenant(gateway, onboarding):
    tenant = tenant_name()
    token = invite(gateway, tenant)["token"]
    assert call(onboarding, "PUT", path_of(tenant), token, json=secrets_body()).status_code == 204

    resp = call(onboarding, "DELETE", path_of(tenant), token)

    assert resp.status_code == 404
    assert call(onboarding, "GET", path_of(tenant), token).status_code == 200


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
def test_another_tenants_path_answers_as_a_tenant_that_does_not_exist(gateway, onboarding, method):
    own, existing, unknown = tenant_name("own"), tenant_name("b"), tenant_name("none")
    token = invite(gateway, own)["token"]
    admin_onboard(onboarding, existing)
    body = {"json": secrets_body()} if method == "PUT" else {}

    on_existing = call(onboarding, method, path_of(existing), token, **body)
    on_unknown = call(onboarding, method, path_of(unknown), token, **body)
    admin_on_unknown = call(onboarding, "GET", path_of(unknown), ADMIN_TOKEN)

    assert on_existing.status_code == 404
    assert masked(on_existing, existing) == masked(on_unknown, unknown)
    assert masked(on_unknown, unknown) == masked(admin_on_unknown, unknown)
    assert header_names(on_existing) == header_names(on_unknown)
    # Nothing was written or removed for the other tenant.
    assert call(onboarding, "GET", path_of(existing), ADMIN_TOKEN).get_json()["version"] == 1


def test_an_expired_or_revoked_invite_is_401(gateway, onboarding, pg_pool):
    expired_tenant, revoked_tenant = tenant_name("exp"), tenant_name("rev")
    expired = invite(gateway, expired_tenant)["token"]
    revoked = invite(gateway, revoked_tenant)["token"]
    expire(pg_pool, expired)
    call(gateway, "DELETE", f"/tenants/{revoked_tenant}/invites", API_TOKEN)

    for token, tenant in ((expired, expired_tenant), (revoked, revoked_tenant)):
        resp = call(onboarding, "PUT", path_of(tenant), token, json=secrets_body())
        assert resp.status_code == 401
        assert resp.get_json()["error"]["code"] == "unauthorized"
    assert tenants_listed(gateway)[expired_tenant]["invite"]["state"] == "expired"


def test_the_admin_token_still_acts_on_any_tenant(onboarding):
    tenant = tenant_name()

    admin_onboard(onboarding, tenant)

    assert call(onboarding, "GET", "/whoami", ADMIN_TOKEN).get_json() == {
        "role": "admin",
        "tenant": None,
    }
    assert call(onboarding, "DELETE", path_of(tenant), ADMIN_TOKEN).status_code == 204


def test_offboarding_revokes_the_tenants_invite(gateway, onboarding):
    tenant = tenant_name()
    token = invite(gateway, tenant)["token"]
    assert call(onboarding, "PUT", path_of(tenant), token, json=secrets_body()).status_code == 204

    assert call(onboarding, "DELETE", path_of(tenant), ADMIN_TOKEN).status_code == 204

    assert call(onboarding, "PUT", path_of(tenant), token, json=secrets_body()).status_code == 401


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(JsonFormatter("test"))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record) + json.dumps(record.__dict__, default=str))


def test_no_log_line_holds_an_invite_token(gateway, onboarding, caplog):
    caplog.set_level(logging.DEBUG)
    handler = Records()
    logging.getLogger().addHandler(handler)
    try:
        tenant = tenant_name()
        token = invite(gateway, tenant)["token"]
        call(onboarding, "GET", "/whoami", token)
        call(onboarding, "PUT", path_of(tenant), token, json=secrets_body())
        call(onboarding, "GET", path_of(tenant_name("other")), token)
        call(gateway, "GET", "/tenants", token)
    finally:
        logging.getLogger().removeHandler(handler)

    assert any("route=/tenants/<tenant>/invites" in line for line in handler.lines)
    assert not [line for line in handler.lines if token in line]


# --- the authorization matrix ----------------------------------------------------------------


def operations(app) -> list[tuple[str, str, bool]]:
    """(method, path template, public) of every operation the app's OpenAPI document lists."""
    document = call(app, "GET", "/openapi.json").get_json()
    found = []
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method == "parameters":
                continue
            found.append((method.upper(), path, operation.get("security") == []))
    assert found
    # Deletes last: an admin's offboarding must not change what the other calls find.
    return sorted(found, key=lambda op: op[0] == "DELETE")


def concrete(template: str, tenant: str) -> str:
    def fill(match: re.Match) -> str:
        return quote(tenant, safe="") if match.group(1) == "tenant" else str(uuid.uuid4())

    return re.sub(r"\{(\w+)\}", fill, template)


@pytest.fixture
def tokens(gateway, pg_pool) -> dict[str, str | None]:
    """One token per kind of caller; the tenant token is tenant A's, the routes are called on B's
    paths."""
    expired = invite(gateway, tenant_name("exp"))["token"]
    expire(pg_pool, expired)
    revoked_tenant = tenant_name("rev")
    revoked = invite(gateway, revoked_tenant)["token"]
    call(gateway, "DELETE", f"/tenants/{revoked_tenant}/invites", API_TOKEN)
    return {
        "none": None,
        "wrong": WRONG_TOKEN,
        "gateway": API_TOKEN,
        "admin": ADMIN_TOKEN,
        "tenant": invite(gateway, tenant_name("a"))["token"],
        "expired": expired,
        "revoked": revoked,
    }


def send(app, method: str, path: str, token: str | None):
    # A body no route accepts: the answer is decided before any body would change anything.
    body = {"json": {"matrix": True}} if method in ("POST", "PUT", "PATCH") else {}
    return call(app, method, path, token, **body)


@pytest.mark.parametrize("kind", CALLERS)
def test_every_gateway_route_admits_only_operator_tokens(gateway, tokens, kind):
    ops = operations(gateway)
    assert {(method, path) for method, path, public in ops if public} == GATEWAY_PUBLIC
    tenant = tenant_name("b")

    for method, template, public in ops:
        resp = send(gateway, method, concrete(template, tenant), tokens[kind])
        where = f"{method} {template} as {kind}: {resp.status_code}"
        if public:
            assert resp.status_code != 401, where
        elif kind == "gateway":
            assert resp.status_code not in (401, 403), where
        else:
            assert resp.status_code == 401, where
            assert resp.get_json()["error"]["code"] == "unauthorized", where


@pytest.mark.parametrize("kind", CALLERS)
def test_every_onboarding_route_admits_admins_and_tenants_only_on_their_own(
    onboarding, tokens, kind
):
    ops = operations(onboarding)
    assert {(method, path) for method, path, public in ops if public} == ONBOARDING_PUBLIC
    tenant, unknown = tenant_name("b"), tenant_name("none")
    admin_onboard(onboarding, tenant)
    not_there = masked(call(onboarding, "GET", path_of(unknown), ADMIN_TOKEN), unknown)

    for method, template, public in ops:
        resp = send(onboarding, method, concrete(template, tenant), tokens[kind])
        where = f"{method} {template} as {kind}: {resp.status_code}"
        if public:
            assert resp.status_code != 401, where
        elif kind == "admin":
            assert resp.status_code not in (401, 403, 404), where
        elif kind == "tenant" and "{tenant}" in template:
            assert masked(resp, tenant) == not_there, where
        elif kind == "tenant":
            assert resp.status_code == 200, where
        else:
            assert resp.status_code == 401, where
            assert resp.get_json()["error"]["code"] == "unauthorized", where


# --- offboarding racing a tenant's write -------------------------------------------------------


class HeldFirstRead:
    """The tenant secrets adapter, whose next `presence` read (the first step of a PUT) waits
    until released: the request has passed its token check and not yet touched Vault."""

    def __init__(self, real) -> None:
        self._real = real
        self.armed = False
        self.entered, self.release = threading.Event(), threading.Event()

    def __getattr__(self, name):
        return getattr(self._real, name)

    def presence(self, tenant):
        if self.armed:
            self.armed = False
            self.entered.set()
            assert self.release.wait(30)
        return self._real.presence(tenant)


def test_an_invite_cannot_write_back_the_secrets_of_a_tenant_offboarded_meanwhile(
    settings, gateway
):
    held = HeldFirstRead(
        HvacTenantSecrets(vault_client(settings), kv_mount=settings.vault_kv_mount)
    )
    app = create_onboarding(settings, secrets=held)
    tenant = tenant_name("race")
    admin_onboard(app, tenant)
    token = invite(gateway, tenant)["token"]
    answers: list[int] = []

    held.armed = True
    writer = threading.Thread(
        target=lambda: answers.append(
            call(app, "PUT", path_of(tenant), token, json=secrets_body()).status_code
        )
    )
    writer.start()
    assert held.entered.wait(30)
    first = call(app, "DELETE", path_of(tenant), ADMIN_TOKEN).status_code
    held.release.set()
    writer.join(30)
    # The operator repeats an offboarding that was refused while the tenant's write was under way.
    for _ in range(3):
        if first == 204:
            break
        first = call(app, "DELETE", path_of(tenant), ADMIN_TOKEN).status_code
    assert first == 204 and len(answers) == 1

    # Offboarded means offboarded: no secrets, not onboarded, and the invite no longer works.
    assert call(app, "GET", path_of(tenant), ADMIN_TOKEN).status_code == 404
    assert tenants_listed(gateway)[tenant]["onboarded"] is False
    assert call(app, "PUT", path_of(tenant), token, json=secrets_body()).status_code == 401
