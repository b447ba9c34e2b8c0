"""The dashboard's sign-in and session against the gateway app on its real peers (Postgres, Redis):
the cookie's flags and content, the server-side session (sign-out ends every copy of the cookie;
a removed token ends its sessions), bearer-or-session on the JSON API, CSRF on state-changing
calls, the page headers. The browser itself is exercised in tests/e2e/test_ui.py.
"""

import base64
import json
import re
import secrets
import uuid
import zlib
from urllib.parse import quote

import pytest

from services.api.app import create_app
from services.api.auth import SESSION_COOKIE
from services.api.ui import PAGE_CONTENT_SECURITY_POLICY
from shared.adapters.registry import PostgresFleetRegistry
from shared.adapters.tenants import PostgresTenantDirectory
from shared.celery_app import make_celery
from shared.settings import load_settings

TOKEN = "ui-test-token-" + secrets.token_hex(8)
OTHER_TOKEN = "ui-test-other-" + secrets.token_hex(8)
CSRF_META = re.compile(r'<meta name="csrf-token" content="([^"]+)"')


@pytest.fixture(scope="module")
def make_app(migrated_database_url, redis_url, pg_pool):
    """Builds gateway apps the way each gunicorn worker does, on the module's own peers."""
    celery_apps = []

    def build(tokens: str = TOKEN, **env):
        settings = load_settings(
            {
                "DATABASE_URL": migrated_database_url,
                "REDIS_URL": redis_url,
                "DARK_API_TOKENS": tokens,
                **env,
            },
            service="api",  # as services/api loads them: the gateway's own checks
        )
        celery_app = make_celery(settings)
        celery_apps.append(celery_app)
        return create_app(
            settings,
            registry=PostgresFleetRegistry(pg_pool),
            tenants=PostgresTenantDirectory(pg_pool),
            celery_app=celery_app,
        )

    yield build
    for celery_app in celery_apps:
        celery_app.close()


@pytest.fixture(scope="module")
def app(make_app):
    return make_app(f"{TOKEN},{OTHER_TOKEN}")


PRODUCTION = {
    "DARK_ENV": "production",
    "DARK_ONBOARDING_TOKENS": "onb-" + secrets.token_hex(8),
    "DARK_VM_IMAGE": "fd8image",
    "FLOWER_BASIC_AUTH": "ops:" + secrets.token_hex(8),
    "YC_SA_KEY_FILE": "/nonexistent/sa.json",
    "DARK_SESSION_SECRET": secrets.token_hex(32),
    "DARK_DEPLOYMENT": "prod-eu",
}


def sessions_in_table(pg_pool, cookie_value: str) -> int:
    session_id = session_payload(cookie_value)["sid"]
    with pg_pool.connection() as conn:
        return conn.execute(
            "SELECT count(*) FROM operator_sessions WHERE id_hash = sha256(%s::bytea)",
            (session_id.encode(),),
        ).fetchone()[0]


def sign_in(client, token: str = TOKEN, **form):
    return client.post("/ui/sign-in", data={"token": token, **form})


def signed_in_client(app):
    client = app.test_client()
    assert sign_in(client).status_code == 303
    page = client.get("/ui/").get_data(as_text=True)
    return client, CSRF_META.search(page).group(1)


def session_payload(cookie_value: str) -> dict:
    """What a Flask session cookie says to anyone who reads it (it is signed, not encrypted)."""
    compressed = cookie_value.startswith(".")
    payload = cookie_value.removeprefix(".").split(".")[0]
    raw = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    return json.loads(zlib.decompress(raw) if compressed else raw)


def test_the_sign_in_page_is_served_with_a_strict_policy(app):
    assert app.test_client().get("/ui").headers["Location"].endswith("/ui/")
    resp = app.test_client().get("/ui/")
    assert resp.status_code == 200
    assert 'name="token"' in resp.get_data(as_text=True)
    assert resp.headers["Content-Security-Policy"] == PAGE_CONTENT_SECURITY_POLICY
    assert "script-src 'self'" in PAGE_CONTENT_SECURITY_POLICY
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert resp.headers["Referrer-Policy"] == "no-referrer"
    assert resp.headers["X-Frame-Options"] == "DENY"
    assert resp.headers["Cache-Control"] == "no-store"


def test_a_wrong_token_stays_on_sign_in_with_an_error_and_no_session(app):
    client = app.test_client()
    resp = sign_in(client, "not-the-token-" + secrets.token_hex(8))
    assert resp.status_code == 401
    assert "That token is not valid." in resp.get_data(as_text=True)
    assert client.get_cookie(SESSION_COOKIE) is None
    assert client.get("/instances").status_code == 401


def test_the_session_cookie_is_httponly_strict_and_holds_no_token(app):
    client = app.test_client()
    resp = sign_in(client)
    assert resp.status_code == 303 and resp.headers["Location"] == "/ui/"
    set_cookie = resp.headers["Set-Cookie"]
    assert "HttpOnly" in set_cookie and "SameSite=Strict" in set_cookie
    assert "Secure" not in set_cookie  # development serves plain http on loopback
    cookie = client.get_cookie(SESSION_COOKIE).value
    payload = session_payload(cookie)
    assert set(payload) == {"_permanent", "sid", "csrf"}
    assert TOKEN not in cookie and TOKEN not in json.dumps(payload)


def test_production_marks_the_cookie_secure(make_app):
    production = make_app(
        DARK_ENV="production",
        DARK_ONBOARDING_TOKENS="onb-" + secrets.token_hex(8),
        DARK_VM_IMAGE="fd8image",
        FLOWER_BASIC_AUTH="ops:" + secrets.token_hex(8),
        YC_SA_KEY_FILE="/nonexistent/sa.json",
        YC_SECURITY_GROUP_IDS="enpsg0123456789abcdef",
        DARK_SESSION_SECRET=secrets.token_hex(32),
        DARK_DEPLOYMENT="prod-eu",
    )
    resp = sign_in(production.test_client())
    assert resp.status_code == 303
    assert "Secure" in resp.headers["Set-Cookie"]


def test_hsts_is_sent_in_production_only(make_app, app):
    production = make_app(**PRODUCTION).test_client()
    for path in ("/health", "/ui/", "/instances"):
        assert production.get(path).headers["Strict-Transport-Security"] == "max-age=31536000"
    development = app.test_client()
    for path in ("/health", "/ui/", "/instances"):
        assert "Strict-Transport-Security" not in development.get(path).headers


def test_a_session_reads_the_api_without_a_bearer_token(app):
    client, _ = signed_in_client(app)
    resp = client.get("/instances?limit=1")
    assert resp.status_code == 200
    assert "items" in resp.get_json()


def test_a_state_changing_call_with_the_session_needs_the_csrf_header(app):
    client, csrf = signed_in_client(app)
    path = f"/instances/acme/{uuid.uuid4()}"
    for method, url, kwargs in [
        ("POST", "/instances", {"json": {"tenant": ""}}),
        ("DELETE", path, {}),
        ("POST", path + "/heal", {}),
    ]:
        refused = client.open(url, method=method, **kwargs)
        assert refused.status_code == 403, (method, url)
        assert refused.get_json()["error"]["code"] == "csrf_failed"
        wrong = client.open(url, method=method, headers={"X-CSRF-Token": "x" * 43}, **kwargs)
        assert wrong.status_code == 403
        # With the header the request reaches the view, which answers on its merits.
        passed = client.open(url, method=method, headers={"X-CSRF-Token": csrf}, **kwargs)
        assert passed.status_code in (404, 422), (method, url, passed.get_data(as_text=True))


def test_a_bearer_request_needs_no_csrf_header_and_a_bad_one_does_not_fall_back(app):
    client, _ = signed_in_client(app)
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    resp = client.post("/instances", json={"tenant": ""}, headers=bearer)
    assert resp.status_code == 422
    # A wrong bearer token is a 401 even with a valid session beside it.
    resp = client.get("/instances", headers={"Authorization": "Bearer " + "w" * 20})
    assert resp.status_code == 401


def test_every_gunicorn_worker_accepts_the_session_and_new_tokens_end_it(app, make_app):
    client, _ = signed_in_client(app)
    cookie = client.get_cookie(SESSION_COOKIE).value
    other_worker = make_app(f"{TOKEN},{OTHER_TOKEN}").test_client()
    other_worker.set_cookie(SESSION_COOKIE, cookie)
    assert other_worker.get("/instances?limit=1").status_code == 200
    rotated = make_app(OTHER_TOKEN).test_client()
    rotated.set_cookie(SESSION_COOKIE, cookie)
    assert rotated.get("/instances?limit=1").status_code == 401


def test_removing_a_token_ends_the_sessions_signed_in_with_it(make_app):
    """With a fixed session secret (production's case) the cookie's signature stays valid when
    the tokens change: the session's record of its token is what ends it."""
    secret = {"DARK_SESSION_SECRET": secrets.token_hex(32)}
    client, _ = signed_in_client(make_app(f"{TOKEN},{OTHER_TOKEN}", **secret))
    cookie = client.get_cookie(SESSION_COOKIE).value
    kept = make_app(f"{OTHER_TOKEN},{TOKEN}", **secret).test_client()
    kept.set_cookie(SESSION_COOKIE, cookie)
    assert kept.get("/instances?limit=1").status_code == 200
    removed = make_app(OTHER_TOKEN, **secret).test_client()
    removed.set_cookie(SESSION_COOKIE, cookie)
    assert removed.get("/instances?limit=1").status_code == 401
    # Ended, not suspended: configuring the token again does not bring the session back.
    restored = make_app(f"{TOKEN},{OTHER_TOKEN}", **secret).test_client()
    restored.set_cookie(SESSION_COOKIE, cookie)
    assert restored.get("/instances?limit=1").status_code == 401


def test_sign_out_ends_the_session_for_every_copy_of_the_cookie(app, pg_pool):
    client, csrf = signed_in_client(app)
    stolen = client.get_cookie(SESSION_COOKIE).value
    thief = app.test_client()
    thief.set_cookie(SESSION_COOKIE, stolen)
    assert thief.get("/instances?limit=1").status_code == 200
    assert sessions_in_table(pg_pool, stolen) == 1

    assert client.post("/ui/sign-out", data={"csrf_token": csrf}).status_code == 303
    assert sessions_in_table(pg_pool, stolen) == 0
    replay = app.test_client()
    replay.set_cookie(SESSION_COOKIE, stolen)
    assert replay.get("/instances?limit=1").status_code == 401
    assert 'name="token"' in replay.get("/ui/").get_data(as_text=True)  # the sign-in page
    assert (
        replay.post(
            "/instances", json={"tenant": "acme"}, headers={"X-CSRF-Token": csrf}
        ).status_code
        == 401
    )


def test_the_table_holds_neither_the_session_id_nor_the_token(app, pg_pool):
    client, _ = signed_in_client(app)
    cookie = client.get_cookie(SESSION_COOKIE).value
    session_id = session_payload(cookie)["sid"]
    with pg_pool.connection() as conn:
        rows = conn.execute("SELECT id_hash, token_digest FROM operator_sessions").fetchall()
    stored = repr(rows)
    assert session_id not in stored and TOKEN not in stored and OTHER_TOKEN not in stored
    assert len(rows) >= 1


def test_an_expired_session_ends_whatever_the_cookie_says(app, pg_pool):
    client, _ = signed_in_client(app)
    session_id = session_payload(client.get_cookie(SESSION_COOKIE).value)["sid"]
    with pg_pool.connection() as conn:
        conn.execute(
            "UPDATE operator_sessions SET expires_at = now() - interval '1 second'"
            " WHERE id_hash = sha256(%s::bytea)",
            (session_id.encode(),),
        )
    assert client.get("/instances?limit=1").status_code == 401


def test_a_forged_session_id_is_no_session(make_app):
    """Signed with the right key (as by someone who has it), but naming no session row."""
    app = make_app()
    client, _ = signed_in_client(app)
    with app.test_request_context():
        from flask import session

        session["sid"] = "x" * 43
        session["csrf"] = "y" * 43
        forged = app.session_interface.get_signing_serializer(app).dumps(dict(session))
    client.set_cookie(SESSION_COOKIE, forged)
    assert client.get("/instances?limit=1").status_code == 401


def test_sign_out_ends_the_session_only_from_the_dashboard_form(app):
    client, csrf = signed_in_client(app)
    client.post("/ui/sign-out", data={"csrf_token": "forged"})
    assert client.get("/instances?limit=1").status_code == 200
    resp = client.post("/ui/sign-out", data={"csrf_token": csrf})
    assert resp.status_code == 303
    assert client.get("/instances?limit=1").status_code == 401


def test_the_vm_page_sends_a_signed_out_browser_to_sign_in_and_back(app):
    client = app.test_client()
    path = f"/ui/instances/{quote('Ünïcode-tenant')}/{uuid.uuid4()}"
    resp = client.get(path)
    assert resp.status_code == 303
    assert resp.headers["Location"].startswith("/ui/?next=")
    page = client.get(resp.headers["Location"]).get_data(as_text=True)
    assert f'name="next" value="{path}"' in page
    resp = sign_in(client, next=path)
    assert resp.headers["Location"] == path
    assert client.get(path).status_code == 200


@pytest.mark.parametrize(
    "target", ["https://evil.example/", "//evil.example/ui/", "/ui//evil.example", "/elsewhere"]
)
def test_sign_in_never_redirects_off_the_dashboard(app, target):
    resp = sign_in(app.test_client(), next=target)
    assert resp.headers["Location"] == "/ui/"


def test_the_dashboard_links_to_flower_only_when_its_url_is_set(app, make_app):
    client, _ = signed_in_client(app)
    assert "Flower" not in client.get("/ui/").get_data(as_text=True)
    with_flower, _ = signed_in_client(make_app(DARK_FLOWER_URL="http://127.0.0.1:5555/"))
    page = with_flower.get("/ui/").get_data(as_text=True)
    assert 'href="http://127.0.0.1:5555/"' in page and 'rel="noopener noreferrer"' in page


def test_static_files_are_served_without_a_session_and_nothing_outside_them(app):
    client = app.test_client()
    resp = client.get("/ui/static/common.js")
    assert resp.status_code == 200
    assert resp.mimetype == "text/javascript"
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert client.get("/ui/static/../ui.py").status_code == 404


def test_the_dashboard_shows_a_banner_while_the_newest_run_is_refused(app, pg_pool):
    from html import unescape

    from shared.adapters.runs import PostgresReconcileRuns

    runs = PostgresReconcileRuns(pg_pool)
    client, _csrf = signed_in_client(app)
    orphan = {"kind": "orphan", "vm_id": "fhm-banner", "result": "held back", "held_back": True}
    lost = {"kind": "lost", "instance_id": str(uuid.uuid4()), "result": "held back"}
    refused = runs.start(dry_run=False, trigger="test")
    runs.finish(
        refused,
        outcome="refused",
        counts={"orphan": 11, "lost": 1, "held_back": 12, "destructive": 12},
        actions=[orphan] * 11 + [{**lost, "held_back": True}],
        errors=[],
    )
    applied = None
    try:
        page = unescape(client.get("/ui/").get_data(as_text=True))
        applied = runs.start(dry_run=False, trigger="test")
        runs.finish(applied, outcome="applied", counts={}, actions=[], errors=[])
        later = client.get("/ui/").get_data(as_text=True)
    finally:
        with pg_pool.connection() as conn:
            conn.execute("DELETE FROM reconcile_runs WHERE id IN (%s, %s)", (refused, applied))

    banner = re.search(r'<section id="reconcile-refused".*?</section>', page, re.S)
    assert banner, "no banner for a refused run"
    text = " ".join(re.sub(r"<[^>]+>", " ", banner.group(0)).split())
    assert f"run {refused} was refused" in text
    assert "delete 11 VMs with no instance row" in text and "mark 1 instance lost" in text
    assert 'POST /reconcile {"confirm_destructive": 12}' in text
    assert "RECONCILE_MAX_DESTRUCTIVE" in text
    assert 'id="reconcile-refused"' not in later
