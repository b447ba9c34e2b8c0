"""The onboarding service against its real peers, through Flask's test client: OpenBao (tenant
secrets through the real HvacTenantSecrets), Postgres (the tenant directory, and the fleet registry
for the live-instance check).

Every call goes through `Api` (tests/support/onboarding.py), which fails the test on a 500, on a
response without a request id or the security headers, and on a response that holds any secret
value a test submitted. The table of bad requests is in test_onboarding_validation.py.
"""

import json
import logging
import re
import secrets
import threading
import unicodedata
import uuid

import pytest
import requests
from hvac.exceptions import InvalidPath
from psycopg_pool import ConnectionPool

from services.onboarding.app import create_app
from shared.adapters.bundles import PostgresBundleRemover
from shared.adapters.registry import PostgresFleetRegistry
from shared.adapters.tenants import PostgresTenantDirectory
from shared.adapters.vault_client import vault_client
from shared.adapters.vault_kv import HvacTenantSecrets
from shared.domain.lifecycle import Status
from shared.domain.tenants import MAX_TENANT_LENGTH
from shared.logs import JsonFormatter
from shared.web import TENANT_PATTERN
from tests.support.onboarding import (
    API_TOKEN,
    SUBMITTED,
    TOKEN,
    Api,
    canary,
    error_of,
    forget_tenants,
    onboard,
    path_of,
    secrets_body,
    settings_for,
    stored,
)
from tests.support.processes import free_port, wait_until

# Every tenant of this module starts with this, so teardown finds (and removes) all it wrote.
PREFIX = f"onbtest-{secrets.token_hex(4)}"
SECRETS_ROUTE = "/tenants/<tenant:tenant>/secrets"


def tenant_name(label: str = "t") -> str:
    return f"{PREFIX}-{label}-{secrets.token_hex(3)}"


# --- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def settings(openbao, migrated_database_url):
    return settings_for(openbao, migrated_database_url)


@pytest.fixture(scope="module")
def directory(pg_pool):
    return PostgresTenantDirectory(pg_pool)


@pytest.fixture(scope="module")
def registry(pg_pool):
    return PostgresFleetRegistry(pg_pool)


@pytest.fixture(scope="module")
def raw(openbao):
    return openbao.client()


@pytest.fixture(scope="module")
def app(settings, directory, registry, raw, pg_pool):
    yield create_app(
        settings, tenants=directory, fleet_counts=registry, bundles=PostgresBundleRemover(pg_pool)
    )
    forget_tenants(raw, pg_pool, PREFIX)


@pytest.fixture
def api(app):
    return Api(app)


# --- store and show --------------------------------------------------------------------------


def test_put_then_get_shows_presence_and_version_but_never_a_value(api, raw, directory):
    tenant = tenant_name()
    body = secrets_body()

    put = api.put(tenant, body)

    assert put.status_code == 204
    assert put.headers["ETag"] == '"1"'
    got = api.get(tenant)
    assert got.status_code == 200
    assert got.headers["ETag"] == '"1"'
    status = got.get_json()
    assert status == {
        "tenant": tenant,
        "fields": {"claude_oauth_token": True, "nks_pat": True, "forges": ["github", "gitea"]},
        "version": 1,
        "updated_at": status["updated_at"],
    }
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", status["updated_at"])
    # Really in OpenBao, as sent (host names lower-cased), and recorded in Postgres.
    assert stored(raw, tenant) == {
        **body,
        "forges": [body["forges"][0], {**body["forges"][1], "host": "git.example.org:3000"}],
        "version": 1,
    }
    record = directory.get(tenant)
    assert record.onboarded
    assert record.secrets_version == 1


def test_a_second_put_replaces_the_set_and_bumps_the_version(api, raw, directory):
    tenant = tenant_name()
    onboard(api, tenant)
    first = directory.get(tenant)
    first_status = api.get(tenant).get_json()

    replacement = secrets_body(forges=[])
    assert api.put(tenant, replacement).headers["ETag"] == '"2"'

    status = api.get(tenant).get_json()
    assert status["fields"] == {"claude_oauth_token": True, "nks_pat": True, "forges": []}
    assert status["version"] == 2
    assert status["updated_at"] > first_status["updated_at"]
    assert stored(raw, tenant)["claude_oauth_token"] == replacement["claude_oauth_token"]
    record = directory.get(tenant)
    assert record.secrets_version == 2
    assert record.onboarded_at == first.onboarded_at
    assert record.updated_at > first.updated_at


def test_a_tenant_never_onboarded_is_404(api, directory):
    tenant = tenant_name("never")

    resp = api.get(tenant)

    assert resp.status_code == 404
    assert error_of(resp)["code"] == "not_onboarded"
    assert directory.get(tenant) is None


def test_tenant_names_are_taken_in_their_nfc_form(api, raw, directory):
    nfc = f"{PREFIX}-café-{secrets.token_hex(2)}"
    nfd = unicodedata.normalize("NFD", nfc)
    assert nfd != nfc

    assert api.put(nfd, secrets_body()).status_code == 204

    assert api.get(nfc).get_json()["tenant"] == nfc
    assert stored(raw, nfc)["version"] == 1
    assert directory.get(nfc).secrets_version == 1


# --- tokens ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "authorization",
    [None, f"Bearer {API_TOKEN}", f"Basic {TOKEN}", f"Bearer {TOKEN}x", "Bearer ", TOKEN],
    ids=["none", "gateway-token", "basic", "wrong-token", "empty", "no-scheme"],
)
def test_only_onboarding_tokens_are_accepted(app, raw, directory, authorization):
    tenant = tenant_name("auth")
    anonymous = Api(app, token=None)
    headers = {"Authorization": authorization} if authorization else {}

    for method, kwargs in (("PUT", {"json": secrets_body()}), ("GET", {}), ("DELETE", {})):
        resp = anonymous(method, path_of(tenant), headers=headers, **kwargs)
        assert resp.status_code == 401, method
        assert error_of(resp)["code"] == "unauthorized"
        assert resp.headers["WWW-Authenticate"].startswith("Bearer ")

    with pytest.raises(InvalidPath):
        stored(raw, tenant)
    assert directory.get(tenant) is None


def test_health_page_and_openapi_need_no_token(app):
    anonymous = Api(app, token=None)
    for path in ("/health", "/", "/openapi.json", "/static/onboarding.js", "/docs"):
        assert anonymous("GET", path).status_code == 200, path


def test_the_openapi_document_lists_every_route(app, api):
    doc = api("GET", "/openapi.json").get_json()

    assert doc["openapi"].startswith("3.")
    for rule in app.url_map.iter_rules():
        # /docs (shared/web/docs.py) is HTML for browsers, not part of the API.
        if rule.endpoint == "static" or rule.endpoint.startswith("docs."):
            continue
        path = re.sub(r"<(?:[^:>]+:)?([^>]+)>", r"{\1}", rule.rule)
        assert path in doc["paths"], path
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            assert method.lower() in doc["paths"][path], (path, method)
    put = doc["paths"]["/tenants/{tenant}/secrets"]["put"]
    assert {"204", "409", "412", "413", "422", "503"} <= set(put["responses"])


def test_the_document_states_the_tenant_rule_that_validation_enforces(api):
    doc = api("GET", "/openapi.json").get_json()

    (parameter,) = doc["paths"]["/tenants/{tenant}/secrets"]["parameters"]
    assert parameter["in"] == "path"
    assert parameter["name"] == "tenant"
    assert parameter["schema"] == {
        "type": "string",
        "minLength": 1,
        "maxLength": MAX_TENANT_LENGTH,
        "pattern": TENANT_PATTERN,
    }


def test_the_page_is_plain_html_with_password_inputs_and_a_strict_policy(app):
    resp = Api(app, token=None)("GET", "/")

    assert resp.mimetype == "text/html"
    policy = resp.headers["Content-Security-Policy"]
    assert "script-src 'self'" in policy
    assert "unsafe" not in policy
    html = resp.get_data(as_text=True)
    assert "<script>" not in html  # no inline script: the policy would block it anyway
    secret_inputs = ["token", "claude_oauth_token", "nks_pat", "forge-0-token"]
    for input_id in secret_inputs:
        tag = re.search(rf'<input id="{input_id}"[^>]*>', html).group(0)
        assert 'type="password"' in tag, tag
        assert re.search(r'autocomplete="(off|new-password)"', tag), tag


# --- concurrent writers ----------------------------------------------------------------------


class ReadsInLockstep:
    """The real store, except that each `presence` returns only once `parties` requests have read.

    That forces the interleaving a race produces by chance: every writer has read the same version
    before any of them writes.
    """

    def __init__(self, store: HvacTenantSecrets, parties: int) -> None:
        self._store = store
        self._barrier = threading.Barrier(parties, timeout=10)

    def presence(self, tenant):
        presence = self._store.presence(tenant)
        self._barrier.wait()
        return presence

    def __getattr__(self, name):
        return getattr(self._store, name)


def race(app, tenant: str, bodies: list[dict]) -> list:
    responses: list = [None] * len(bodies)
    start = threading.Barrier(len(bodies), timeout=10)

    def put(index: int) -> None:
        client = Api(app)
        start.wait()
        responses[index] = client.put(tenant, bodies[index])

    threads = [threading.Thread(target=put, args=(i,)) for i in range(len(bodies))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return responses


def test_two_racing_puts_one_wins_and_the_other_is_told_to_retry(
    settings, directory, registry, api, raw
):
    tenant = tenant_name("race")
    onboard(api, tenant)
    lockstep = ReadsInLockstep(HvacTenantSecrets(vault_client(settings)), parties=2)
    app = create_app(settings, secrets=lockstep, tenants=directory, fleet_counts=registry)
    bodies = [secrets_body(), secrets_body()]

    responses = race(app, tenant, bodies)

    assert sorted(resp.status_code for resp in responses) == [204, 409]
    winner = next(i for i, resp in enumerate(responses) if resp.status_code == 204)
    loser = responses[1 - winner]
    assert error_of(loser)["code"] == "concurrent_update"
    assert "retry" in error_of(loser)["message"]
    # The winner's set is what is stored; the loser wrote nothing over it.
    assert responses[winner].headers["ETag"] == '"2"'
    held = stored(raw, tenant)
    assert held["version"] == 2
    assert held["claude_oauth_token"] == bodies[winner]["claude_oauth_token"]
    assert directory.get(tenant).secrets_version == 2


def test_many_racing_puts_never_overwrite_silently(app, raw, directory, api):
    tenant = tenant_name("herd")
    onboard(api, tenant)
    bodies = [secrets_body() for _ in range(6)]

    responses = race(app, tenant, bodies)

    assert {resp.status_code for resp in responses} <= {204, 409}
    won = {
        int(resp.headers["ETag"].strip('"')): i
        for i, resp in enumerate(responses)
        if resp.status_code == 204
    }
    # Each success has a version of its own, every version stored was answered with a 204, and
    # the newest is the last success's body.
    assert len(won) == sum(resp.status_code == 204 for resp in responses) >= 1
    held = stored(raw, tenant)
    assert sorted(won) == list(range(2, held["version"] + 1))
    assert held["claude_oauth_token"] == bodies[won[held["version"]]]["claude_oauth_token"]
    assert directory.get(tenant).secrets_version == held["version"]


def test_if_match_guards_the_version_being_replaced(api, raw, directory):
    tenant = tenant_name("ifmatch")
    onboard(api, tenant)
    api.put(tenant, secrets_body())  # now at version 2

    stale = api.put(tenant, secrets_body(), headers={"If-Match": '"1"'})
    assert stale.status_code == 412
    assert error_of(stale)["code"] == "version_mismatch"
    assert stored(raw, tenant)["version"] == 2

    current = api.put(tenant, secrets_body(), headers={"If-Match": '"2"'})
    assert current.status_code == 204
    assert current.headers["ETag"] == '"3"'
    assert directory.get(tenant).secrets_version == 3

    for malformed in ("2", "*", 'W/"3"', '"0"', '"3", "4"'):
        resp = api.put(tenant, secrets_body(), headers={"If-Match": malformed})
        assert resp.status_code == 422, malformed
        assert "If-Match" in error_of(resp)["details"]["fields"]
    assert stored(raw, tenant)["version"] == 3


def test_if_match_on_a_tenant_not_onboarded_writes_nothing(api, raw, directory):
    tenant = tenant_name("ifmatch-new")

    resp = api.put(tenant, secrets_body(), headers={"If-Match": '"1"'})

    assert resp.status_code == 412
    with pytest.raises(InvalidPath):
        stored(raw, tenant)
    assert directory.get(tenant) is None


# --- offboarding -----------------------------------------------------------------------------


def test_offboarding_is_refused_while_a_vm_is_live_unless_forced(api, raw, directory, registry):
    tenant = tenant_name("live")
    onboard(api, tenant)
    instance, _ = registry.create(tenant)

    for status in (Status.PENDING, Status.PROVISIONING, Status.INITIALIZING, Status.READY):
        if instance.status != status:
            instance = registry.transition(instance.id, instance.status, status, "test")
        resp = api.delete(tenant)
        assert resp.status_code == 409, status
        error = error_of(resp)
        assert error["code"] == "tenant_has_live_instances"
        assert error["details"]["live_instances"] == "1"
        assert "force=true" in error["message"]
        assert stored(raw, tenant)["version"] == 1
        assert directory.is_onboarded(tenant)

    assert api.delete(tenant, "?force=true").status_code == 204

    with pytest.raises(InvalidPath):
        stored(raw, tenant)
    record = directory.get(tenant)
    assert not record.onboarded
    assert record.offboarded_at is not None
    assert record.secrets_version is None
    assert api.get(tenant).status_code == 404


def test_offboarding_needs_no_force_once_the_vms_are_gone(api, raw, directory, registry):
    tenant = tenant_name("retired")
    onboard(api, tenant)
    instance, _ = registry.create(tenant)
    registry.transition(instance.id, Status.PENDING, Status.TEARING_DOWN, "test")
    registry.transition(instance.id, Status.TEARING_DOWN, Status.RETIRED, "test")

    assert api.delete(tenant).status_code == 204

    with pytest.raises(InvalidPath):
        stored(raw, tenant)
    assert not directory.is_onboarded(tenant)
    # Offboarding again, or a tenant never onboarded, is not an error and adds no row.
    assert api.delete(tenant).status_code == 204
    never = tenant_name("never")
    assert api.delete(never).status_code == 204
    assert directory.get(never) is None


def test_offboarding_removes_the_tenant_bundle_and_its_identity_claim(
    api, directory, registry, pg_pool, openbao
):
    from shared.adapters.bundles import EnvelopeBundleStore
    from shared.domain.secrets import Bundle
    from tests.integration.test_bundles import transit_for

    tenant = tenant_name("bundle")
    other = tenant_name("bundle")
    onboard(api, tenant)
    onboard(api, other)
    bundles = EnvelopeBundleStore(pg_pool, transit_for(openbao))
    instance, _ = registry.create(tenant)
    for name in (tenant, other):
        assert bundles.claim(name, instance.id) == (instance.id, True)
        bundle = Bundle({"ssh": {"private_key": canary("key-")}})
        assert bundles.put(name, bundle, instance.id) is True

    assert api.delete(tenant, "?force=true").status_code == 204

    assert bundles.get(tenant) is None
    with pg_pool.connection() as conn:
        rows = conn.execute(
            "SELECT count(*) FROM credential_bundles WHERE tenant = %s", (tenant,)
        ).fetchone()[0]
    assert rows == 0
    # A tenant of the same name onboarded later claims a new identity of its own.
    onboard(api, tenant)
    fresh = uuid.uuid4()
    assert bundles.claim(tenant, fresh) == (fresh, True)
    # Another tenant's identity is left alone.
    assert bundles.get(other) is not None
    assert bundles.claim(other, fresh) == (instance.id, False)
    bundles.delete(tenant)
    bundles.delete(other)


@pytest.mark.parametrize("query", ["?force=yes", "?force=1", "?force=true&force=false", "?purge=1"])
def test_offboarding_options_are_validated(api, raw, query):
    tenant = tenant_name("opts")
    onboard(api, tenant)

    resp = api.delete(tenant, query)

    assert resp.status_code == 422
    assert error_of(resp)["details"]["fields"]
    assert stored(raw, tenant)["version"] == 1


# --- Vault and Postgres down -----------------------------------------------------------------


def unseal_key(bao) -> str:
    match = re.search(r"Unseal Key: (\S+)", bao.log_path.read_text())
    assert match, "the dev server prints its unseal key"
    return match.group(1)


def assert_unavailable(resp, code: str) -> None:
    assert resp.status_code == 503
    assert int(resp.headers["Retry-After"]) > 0
    assert error_of(resp)["code"] == code


def test_a_sealed_vault_answers_503_until_unsealed(
    private_openbao, migrated_database_url, directory, registry
):
    bao = private_openbao
    app = create_app(
        settings_for(bao, migrated_database_url), tenants=directory, fleet_counts=registry
    )
    api = Api(app)
    tenant = tenant_name("sealed")
    onboard(api, tenant)

    bao.seal()
    assert_unavailable(api.put(tenant, secrets_body()), "secrets_backend_unavailable")
    assert_unavailable(api.get(tenant), "secrets_backend_unavailable")
    assert directory.get(tenant).secrets_version == 1

    bao.client().sys.submit_unseal_key(unseal_key(bao))
    wait_until(
        lambda: requests.get(f"{bao.addr}/v1/sys/health", timeout=1).status_code == 200,
        30,
        what="OpenBao to be unsealed",
    )
    resp = api.put(tenant, secrets_body())
    assert resp.status_code == 204
    assert resp.headers["ETag"] == '"2"'
    assert directory.get(tenant).secrets_version == 2
    directory.record_offboarded(tenant)


def test_a_stopped_vault_answers_503(private_openbao, migrated_database_url, directory, registry):
    app = create_app(
        settings_for(private_openbao, migrated_database_url),
        tenants=directory,
        fleet_counts=registry,
    )
    api = Api(app)
    tenant = tenant_name("stopped")
    private_openbao.stop()

    assert_unavailable(api.put(tenant, secrets_body()), "secrets_backend_unavailable")
    assert_unavailable(api.get(tenant), "secrets_backend_unavailable")
    assert directory.get(tenant) is None


def test_postgres_down_answers_503_and_a_retry_converges(settings, raw, directory, api):
    down = ConnectionPool(
        f"postgresql://postgres@127.0.0.1:{free_port()}/nothing",
        min_size=0,
        max_size=1,
        timeout=1,
        open=True,
    )
    try:
        app = create_app(
            settings,
            tenants=PostgresTenantDirectory(down),
            fleet_counts=PostgresFleetRegistry(down),
            bundles=PostgresBundleRemover(down),
        )
        cut_off = Api(app)
        tenant = tenant_name("pgdown")

        put = cut_off.put(tenant, secrets_body())
        assert_unavailable(put, "registry_unavailable")
        # Vault took the write first; the answer says so, and the directory never saw it.
        assert "version 1" in error_of(put)["message"]
        assert directory.get(tenant) is None
        assert_unavailable(cut_off.delete(tenant), "registry_unavailable")
        assert stored(raw, tenant)["version"] == 1
    finally:
        down.close()

    # The same request once Postgres answers: both stores agree again.
    assert api.put(tenant, secrets_body()).status_code == 204
    assert directory.get(tenant).secrets_version == stored(raw, tenant)["version"] == 2


# --- logs ------------------------------------------------------------------------------------


def test_logs_hold_one_line_per_request_and_never_a_secret(api, caplog):
    caplog.set_level(logging.DEBUG)
    tenant = tenant_name("logs")

    responses = [
        api.put(tenant, secrets_body()),
        api.get(tenant),
        api.put(tenant, secrets_body(claude_oauth_token=canary("sk-ant-api03-"))),
        api.put(tenant, {**secrets_body(), canary("ghp_"): "pasted as a name"}),
        api(
            "PUT",
            path_of(tenant),
            data=json.dumps(secrets_body())[:-2],
            content_type="application/json",
        ),
        api.put(tenant, secrets_body(), headers={"If-Match": '"9"'}),
        api.delete(tenant, "?force=true"),
    ]

    formatter = JsonFormatter("onboarding")
    lines = [formatter.format(record) for record in caplog.records]
    text = "\n".join(lines + [repr(record.__dict__) for record in caplog.records])
    for value in SUBMITTED:
        assert value not in text
    request_lines = [
        json.loads(line)
        for line, record in zip(lines, caplog.records, strict=True)
        if record.name == "dark.onboarding" and record.getMessage().startswith("http ")
    ]
    assert [line["request_id"] for line in request_lines] == [
        resp.headers["X-Request-Id"] for resp in responses
    ]
    for line, resp in zip(request_lines, responses, strict=True):
        assert re.fullmatch(
            rf"http method=(PUT|GET|DELETE) route={re.escape(SECRETS_ROUTE)} "
            rf"status={resp.status_code} duration_ms=\d+\.\d",
            line["msg"],
        ), line["msg"]
