"""The gateway against its real peers: Postgres (the registry), Redis (the task queue), the guest
simulator (the live guest view and heal), and gunicorn as a real process.

Every call goes through `Api`, which fails the test on a 500, on a response without a request id,
and on a response body that holds an idempotency key or a bearer token.
"""

import base64
import json
import logging
import secrets
import uuid
from urllib.parse import quote

import pytest
import redis
import requests
from psycopg_pool import ConnectionPool

from services.api.app import create_app
from services.api.schemas import InstancePage
from shared.adapters.registry import PostgresFleetRegistry
from shared.adapters.tenants import PostgresTenantDirectory
from shared.celery_app import QUEUE_PROVISION, TASK_PROVISION, TASK_TEARDOWN, make_celery
from shared.domain.lifecycle import Status
from shared.domain.tenants import MAX_TENANT_LENGTH
from shared.logs import JsonFormatter
from shared.settings import load_settings
from shared.web import TENANT_PATTERN
from tests.support.processes import VENV_BIN, free_port, spawn, stop_process, wait_until

TOKEN = "api-test-token-" + secrets.token_hex(8)
SECOND_TOKEN = "api-test-second-" + secrets.token_hex(8)
WRONG_TOKEN = "api-test-wrong-" + secrets.token_hex(8)
# Every tenant of this module starts with this, so teardown finds (and removes) all it wrote.
PREFIX = f"apitest-{secrets.token_hex(4)}"
MAX_LIVE = 2
UNREACHABLE_ADDRESS = "127.9.255.254"  # outside the simulator's 127.10.0.0/15 range
INSTANCE_FIELDS = {
    "id",
    "tenant",
    "status",
    "vm_name",
    "provider_id",
    "address",
    "reason",
    "created_at",
    "updated_at",
}


# The module's tenant directory; tenant_name() onboards the names it hands out (the onboarding
# service does that in production), so that provisioning is allowed for them.
_directory: list[PostgresTenantDirectory] = []


def tenant_name(label: str = "t", *, onboarded: bool = True) -> str:
    name = f"{PREFIX}-{label}-{secrets.token_hex(3)}"
    if onboarded:
        _directory[0].record_onboarded(name, 1)
    return name


def closed_port() -> int:
    return free_port()  # bound and released at once: nothing listens there


class Api:
    """A Flask test client that authenticates by default and checks every response."""

    def __init__(self, app, token: str | None = TOKEN) -> None:
        self.client = app.test_client()
        self.token = token

    def __call__(self, method: str, path: str, *, auth: bool = True, **kwargs):
        headers = dict(kwargs.pop("headers", {}))
        if auth and self.token:
            headers.setdefault("Authorization", f"Bearer {self.token}")
        resp = self.client.open(path, method=method, headers=headers, **kwargs)
        text = resp.get_data(as_text=True)
        assert resp.status_code != 500, text
        assert resp.headers.get("X-Request-Id"), "every response carries a request id"
        assert resp.is_json, text
        for forbidden in ("idempotency_key", "request_key", TOKEN, SECOND_TOKEN, WRONG_TOKEN):
            assert forbidden not in text
        return resp

    def get(self, path, **kwargs):
        return self("GET", path, **kwargs)

    def post(self, path, **kwargs):
        return self("POST", path, **kwargs)

    def delete(self, path, **kwargs):
        return self("DELETE", path, **kwargs)


def error_of(resp) -> dict:
    body = resp.get_json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message", "details"}
    return body["error"]


# --- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def env(migrated_database_url, redis_url, simulator):
    return {
        "DATABASE_URL": migrated_database_url,
        "REDIS_URL": redis_url,
        "DARK_API_TOKENS": f"{TOKEN},{SECOND_TOKEN}",
        "DARK_MAX_INSTANCES_PER_TENANT": str(MAX_LIVE),
        "DARK_AGENT_PORT": str(simulator.info["agent_port"]),
    }


@pytest.fixture(scope="module")
def settings(env):
    return load_settings(env)


@pytest.fixture(scope="module")
def registry(pg_pool):
    return PostgresFleetRegistry(pg_pool)


@pytest.fixture(scope="module", autouse=True)
def directory(pg_pool):
    _directory[:] = [PostgresTenantDirectory(pg_pool)]
    yield _directory[0]
    with pg_pool.connection() as conn:
        conn.execute("DELETE FROM tenants WHERE name LIKE %s", (PREFIX + "%",))


@pytest.fixture(scope="module")
def broker(redis_url):
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture(scope="module")
def app(settings, registry, pg_pool, broker):
    celery_app = make_celery(settings)
    yield create_app(settings, registry=registry, celery_app=celery_app)
    celery_app.close()
    _remove_module_data(pg_pool, broker)


@pytest.fixture
def api(app):
    return Api(app)


def _remove_module_data(pool, broker) -> None:
    """Drop this module's queued messages (a later worker must not run them) and rows."""
    with pool.connection() as conn:
        ids = {
            str(row[0])
            for row in conn.execute(
                "SELECT id FROM instances WHERE tenant LIKE %s", (PREFIX + "%",)
            )
        }
        for raw in broker.lrange(QUEUE_PROVISION, 0, -1):
            args = _decode(raw)[1][0]
            if args and args[0] in ids:
                broker.lrem(QUEUE_PROVISION, 1, raw)
        conn.execute("DELETE FROM instances WHERE tenant LIKE %s", (PREFIX + "%",))


def _decode(raw: bytes) -> tuple[dict, list]:
    """A kombu Redis message: its headers and its decoded body ([args, kwargs, embed])."""
    message = json.loads(raw)
    return message["headers"], json.loads(base64.b64decode(message["body"]))


def queued(broker, task_id: str) -> list[tuple[dict, list]]:
    """The messages for `task_id` waiting in the provision queue."""
    found = []
    for raw in broker.lrange(QUEUE_PROVISION, 0, -1):
        headers, body = _decode(raw)
        if headers["id"] == task_id:
            found.append((headers, body))
    return found


def count_rows(pool) -> int:
    with pool.connection() as conn:
        return conn.execute("SELECT count(*) FROM instances").fetchone()[0]


def provision(api, tenant: str, **headers) -> dict:
    resp = api.post("/instances", json={"tenant": tenant}, headers=headers)
    assert resp.status_code == 202, resp.get_data(as_text=True)
    return resp.get_json()


def make_ready(registry, tenant: str, address: str):
    instance, _ = registry.create(tenant)
    registry.transition(instance.id, Status.PENDING, Status.PROVISIONING, "test")
    registry.transition(
        instance.id, Status.PROVISIONING, Status.INITIALIZING, "test", address=address
    )
    return registry.transition(instance.id, Status.INITIALIZING, Status.READY, "test")


class JsonLines(logging.Handler):
    """Formats each record as it is emitted, while the request's context is still current."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(JsonFormatter("api"))
        self.lines: list[dict] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(json.loads(self.format(record)))


@pytest.fixture
def log_lines(caplog):
    caplog.set_level(logging.INFO)
    handler = JsonLines()
    logging.getLogger().addHandler(handler)
    yield handler.lines
    logging.getLogger().removeHandler(handler)


# --- open endpoints and authentication -------------------------------------------------------


def test_health_ready_and_openapi_need_no_token(api):
    assert api.get("/health", auth=False).get_json() == {"status": "ok"}
    resp = api.get("/ready", auth=False)
    assert resp.status_code == 200
    assert resp.get_json() == {"postgres": "ok", "redis": "ok"}
    assert api.get("/openapi.json", auth=False).status_code == 200


def test_docs_serves_swagger_ui_from_this_origin_under_a_policy_without_inline_script(app):
    anonymous = app.test_client()
    page = anonymous.get("/docs")
    assert page.status_code == 200
    policy = page.headers["Content-Security-Policy"]
    assert "script-src 'self';" in policy and "unsafe-inline" not in policy
    html = page.get_data(as_text=True)
    assert "<script>" not in html and "https://" not in html
    for asset in ("/docs/assets/swagger-ui-bundle.js", "/docs/assets/swagger-ui.css"):
        assert asset in html
        assert anonymous.get(asset).status_code == 200, asset
    assert "/openapi.json" in anonymous.get("/docs/docs.js").get_data(as_text=True)
    # Only the assets the page loads: nothing else of the package, nothing outside it.
    assert anonymous.get("/docs/assets/index.html").status_code == 404
    # No route (a name is one path segment): the gateway's 401 for every unknown path.
    assert anonymous.get("/docs/assets/..%2f__init__.py").status_code == 401


PROTECTED = [
    ("GET", "/instances"),
    ("POST", "/instances"),
    ("GET", f"/instances/acme/{uuid.uuid4()}"),
    ("GET", f"/instances/acme/{uuid.uuid4()}/events"),
    ("POST", f"/instances/acme/{uuid.uuid4()}/heal"),
    ("DELETE", f"/instances/acme/{uuid.uuid4()}"),
    ("GET", f"/tasks/{uuid.uuid4()}"),
    ("GET", "/no-such-route"),
]
BAD_CREDENTIALS = [
    None,
    f"Bearer {WRONG_TOKEN}",
    "Bearer ",
    f"Basic {base64.b64encode(TOKEN.encode()).decode()}",
    TOKEN,
    f"Bearer {TOKEN[:-1]}",
    f"Bearer {TOKEN}x",
]


@pytest.mark.parametrize("method,path", PROTECTED)
@pytest.mark.parametrize("authorization", BAD_CREDENTIALS)
def test_protected_routes_answer_401_without_a_valid_token(
    api, pg_pool, method, path, authorization
):
    before = count_rows(pg_pool)
    headers = {"Authorization": authorization} if authorization else {}
    resp = api(method, path, auth=False, headers=headers, json={"tenant": tenant_name()})
    assert resp.status_code == 401
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    assert error_of(resp)["code"] == "unauthorized"
    assert count_rows(pg_pool) == before


def test_every_configured_token_is_accepted(app):
    for token in (TOKEN, SECOND_TOKEN):
        assert Api(app, token).get("/instances").status_code == 200


def test_without_configured_tokens_every_protected_route_is_closed(settings, registry):
    app = create_app(
        load_settings({"DATABASE_URL": settings.database_url, "REDIS_URL": settings.redis_url}),
        registry=registry,
    )
    api = Api(app, token="anything-at-all-0123456789")
    assert api.get("/instances").status_code == 401
    assert api.get("/health").status_code == 200


# --- request bodies ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    ['{"tenant": ', "{'tenant': 'x'}", "tenant=x", "\xff\xfe", "[" * 60_000, '{"tenant": "a",}'],
)
def test_malformed_json_is_400(api, pg_pool, data):
    before = count_rows(pg_pool)
    resp = api.post("/instances", data=data, content_type="application/json")
    assert resp.status_code == 400
    assert error_of(resp)["code"] == "malformed_json"
    assert count_rows(pg_pool) == before


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
def test_a_body_that_is_not_declared_json_is_415(api, content_type):
    resp = api.post("/instances", data='{"tenant": "acme"}', content_type=content_type)
    assert resp.status_code == 415
    assert error_of(resp)["code"] == "unsupported_media_type"


def test_a_body_over_64_kib_is_413(api):
    resp = api.post("/instances", json={"tenant": "a" * 70_000})
    assert resp.status_code == 413
    assert error_of(resp)["code"] == "request_entity_too_large"


@pytest.mark.parametrize("body", [[], ["acme"], "acme", 1, None, True])
def test_json_that_is_not_an_object_is_422(api, body):
    resp = api.post("/instances", data=json.dumps(body), content_type="application/json")
    assert resp.status_code == 422
    assert error_of(resp)["code"] == "validation_error"


BAD_TENANTS = [
    "",
    ".hidden",
    "a/b",
    "../etc",
    "a b",
    "tab\there",
    "new\nline",
    "nul\x00byte",
    "x" * 64,
    "emoji-\U0001f600",
    "zero\u200bwidth",
    "rtl\u202eoverride",
    "semi;colon",
    "per%2Fcent",
    "q?uery",
    123,
    None,
    ["acme"],
    {"name": "acme"},
]


@pytest.mark.parametrize("tenant", BAD_TENANTS, ids=repr)
def test_bad_tenant_names_are_422_and_write_nothing(api, pg_pool, tenant):
    before = count_rows(pg_pool)
    resp = api.post("/instances", json={"tenant": tenant})
    assert resp.status_code == 422
    error = error_of(resp)
    assert error["code"] == "validation_error"
    assert "tenant" in error["details"]["fields"]
    assert count_rows(pg_pool) == before


@pytest.mark.parametrize(
    "extra",
    [
        {"extra": 1},
        {"status": "ready"},
        {"id": str(uuid.uuid4())},
        {"vm_name": "dark-vm-x"},
        {"address": "10.0.0.1"},
        {"Tenant": "acme"},
    ],
)
def test_bodies_with_unknown_fields_are_422_and_write_nothing(api, pg_pool, extra):
    before = count_rows(pg_pool)
    resp = api.post("/instances", json={"tenant": tenant_name(), **extra})
    assert resp.status_code == 422
    fields = error_of(resp)["details"]["fields"]
    assert set(fields) == set(extra) - {"tenant"}
    assert count_rows(pg_pool) == before


def test_a_body_without_a_tenant_is_422(api):
    resp = api.post("/instances", json={})
    assert resp.status_code == 422
    assert "tenant" in error_of(resp)["details"]["fields"]


@pytest.mark.parametrize("key", ["", "k" * 201, "caf\xe9", "bell\x07"], ids=repr)
def test_a_malformed_idempotency_key_is_422_and_writes_nothing(api, pg_pool, key):
    before = count_rows(pg_pool)
    resp = api.post("/instances", json={"tenant": tenant_name()}, headers={"Idempotency-Key": key})
    assert resp.status_code == 422
    assert "Idempotency-Key" in error_of(resp)["details"]["fields"]
    assert count_rows(pg_pool) == before


@pytest.mark.parametrize(
    "path",
    [
        "/instances/.hidden/{id}",
        "/instances/a%20b/{id}",
        "/instances/%2E%2E/{id}/events",
        "/instances/{long}/{id}",
    ],
)
def test_a_bad_tenant_in_the_path_is_422(api, path):
    resp = api.get(path.format(id=uuid.uuid4(), long="x" * 64))
    assert resp.status_code == 422
    assert error_of(resp)["code"] == "invalid_tenant"


# --- provisioning ------------------------------------------------------------------------------


def test_provision_commits_the_row_then_queues_a_message_with_ids_and_the_request_id(
    api, registry, broker, log_lines
):
    tenant = tenant_name()
    request_id = "req-" + secrets.token_hex(6)
    resp = api.post("/instances", json={"tenant": tenant}, headers={"X-Request-Id": request_id})
    assert resp.status_code == 202
    assert resp.headers["X-Request-Id"] == request_id
    body = resp.get_json()
    instance = body["instance"]
    assert set(instance) == INSTANCE_FIELDS
    assert instance["tenant"] == tenant
    assert instance["status"] == "pending"
    assert instance["created_at"].endswith("+00:00")
    assert resp.headers["Location"] == f"/instances/{tenant}/{instance['id']}"

    row = registry.get(uuid.UUID(instance["id"]))
    assert row is not None and row.status is Status.PENDING

    [(headers, (args, kwargs, _))] = queued(broker, body["task_id"])
    assert headers["task"] == TASK_PROVISION
    assert headers["request_id"] == request_id
    assert args[0] == instance["id"]
    assert all(uuid.UUID(arg) for arg in args) and kwargs == {}

    ours = [line for line in log_lines if line["logger"].startswith(("dark.api", "shared."))]
    assert ours and all(line["request_id"] == request_id for line in ours)
    [request_line] = [line for line in ours if line["msg"].startswith("http ")]
    assert "method=POST route=/instances status=202" in request_line["msg"]


def test_a_malformed_request_id_is_replaced_by_a_fresh_one(api):
    resp = api.get("/instances", headers={"X-Request-Id": "bad id with spaces"})
    assert resp.headers["X-Request-Id"] != "bad id with spaces"
    assert len(resp.headers["X-Request-Id"]) == 32


def test_the_tenant_is_stored_in_nfc_and_percent_encoded_in_the_location(api, directory):
    decomposed = f"{PREFIX}-Cafe\u0301-テナント"
    composed = f"{PREFIX}-Caf\u00e9-テナント"
    directory.record_onboarded(composed, 1)
    resp = api.post("/instances", json={"tenant": decomposed})
    instance = resp.get_json()["instance"]
    assert instance["tenant"] == composed
    assert resp.headers["Location"] == f"/instances/{quote(composed, safe='')}/{instance['id']}"
    assert api.get(f"/instances/{decomposed}/{instance['id']}").status_code == 200


def test_the_same_idempotency_key_gives_the_same_instance_and_task(api, registry, broker):
    tenant = tenant_name()
    first = provision(api, tenant, **{"Idempotency-Key": "order-42"})
    again = provision(api, tenant, **{"Idempotency-Key": "order-42"})
    assert again["instance"]["id"] == first["instance"]["id"]
    assert again["task_id"] == first["task_id"]
    items, _ = registry.list(tenant=tenant)
    assert [str(i.id) for i in items] == [first["instance"]["id"]]
    assert queued(broker, first["task_id"])

    other = provision(api, tenant, **{"Idempotency-Key": "order-43"})
    assert other["instance"]["id"] != first["instance"]["id"]


def test_the_per_tenant_cap_answers_409_and_frees_up_on_teardown(api, pg_pool):
    tenant = tenant_name()
    first = provision(api, tenant)
    for _ in range(MAX_LIVE - 1):
        provision(api, tenant)
    before = count_rows(pg_pool)
    resp = api.post("/instances", json={"tenant": tenant})
    assert resp.status_code == 409
    assert error_of(resp)["code"] == "quota_exceeded"
    assert count_rows(pg_pool) == before

    assert api.delete(f"/instances/{tenant}/{first['instance']['id']}").status_code == 202
    provision(api, tenant)


# --- reads -------------------------------------------------------------------------------------


def test_list_pages_newest_first_and_filters(api, registry):
    tenant = tenant_name()
    created = [registry.create(tenant)[0] for _ in range(5)]
    registry.transition(created[1].id, Status.PENDING, Status.FAILED, "test failure")

    seen, cursor = [], None
    for _ in range(5):
        query = {"tenant": tenant, "limit": 2, **({"cursor": cursor} if cursor else {})}
        page = api.get("/instances", query_string=query).get_json()
        assert len(page["items"]) <= 2
        seen += [item["id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [str(i.id) for i in reversed(created)]

    failed = api.get("/instances", query_string={"tenant": tenant, "status": "failed"})
    assert [item["id"] for item in failed.get_json()["items"]] == [str(created[1].id)]
    assert failed.get_json()["items"][0]["reason"] == "test failure"

    default = api.get("/instances", query_string={"tenant": tenant}).get_json()
    assert len(default["items"]) == 5 and default["next_cursor"] is None


def test_the_list_answers_the_bytes_flask_smorest_would_write_for_its_schema(app, api, registry):
    tenant = tenant_name()
    created = [registry.create(tenant)[0] for _ in range(3)]
    registry.transition(created[0].id, Status.PENDING, Status.FAILED, "the guest said «nein»")
    registry.transition(created[2].id, Status.PENDING, Status.FAILED, 'quote " and \\ ')

    for query in ({"tenant": tenant, "limit": 2}, {"tenant": tenant}):
        resp = api.get("/instances", query_string=query)
        items, cursor = registry.list(tenant=tenant, limit=query.get("limit", 50))
        with app.app_context():
            expected = app.json.response(
                InstancePage().dump({"items": items, "next_cursor": cursor})
            )
        assert resp.data == expected.data
        assert resp.headers["Content-Type"] == expected.headers["Content-Type"]


@pytest.mark.parametrize(
    "query,field",
    [
        ({"status": "bogus"}, "status"),
        ({"status": ""}, "status"),
        ({"limit": "0"}, "limit"),
        ({"limit": "201"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"tenant": ".bad"}, "tenant"),
        ({"sort": "asc"}, "sort"),
        ({"cursor": ""}, "cursor"),
        ({"limit": ["10", "20"]}, "limit"),  # a key given twice is not a guess
    ],
)
def test_bad_list_queries_are_422(api, query, field):
    resp = api.get("/instances", query_string=query)
    assert resp.status_code == 422
    assert field in error_of(resp)["details"]["fields"]


@pytest.mark.parametrize("cursor", ["not-a-cursor", "AAAA", "=" * 8, "x" * 512])
def test_a_cursor_we_did_not_hand_out_is_422(api, cursor):
    resp = api.get("/instances", query_string={"cursor": cursor})
    assert resp.status_code == 422
    assert error_of(resp)["code"] == "invalid_cursor"


def test_a_query_parameter_given_twice_is_422(api):
    resp = api.get("/instances?limit=1&limit=2")
    assert resp.status_code == 422
    assert "limit" in error_of(resp)["details"]["fields"]


def test_detail_and_events_of_a_pending_instance(api, registry):
    tenant = tenant_name()
    instance = provision(api, tenant)["instance"]
    detail = api.get(f"/instances/{tenant}/{instance['id']}").get_json()
    assert detail["instance"] == instance
    assert detail["entry_points"] is None
    assert detail["guest"] == {
        "reachable": False,
        "health": None,
        "error": "the instance has no address",
    }

    instance_id = uuid.UUID(instance["id"])
    registry.transition(instance_id, Status.PENDING, Status.PROVISIONING, "cloud create requested")
    events = api.get(f"/instances/{tenant}/{instance['id']}/events").get_json()["items"]
    assert [(e["from"], e["to"]) for e in events] == [
        (None, "pending"),
        ("pending", "provisioning"),
    ]
    assert events[1]["reason"] == "cloud create requested"
    assert all(set(e) == {"at", "from", "to", "reason"} for e in events)


def test_unknown_other_tenants_and_non_uuid_instances_are_404(api):
    owner, stranger = tenant_name("owner"), tenant_name("stranger")
    instance_id = provision(api, owner)["instance"]["id"]
    for path in (
        f"/instances/{owner}/{uuid.uuid4()}",
        f"/instances/{stranger}/{instance_id}",
        f"/instances/{owner}/not-a-uuid",
        f"/instances/{owner}/{instance_id[:-1]}",
    ):
        for method, suffix in (("GET", ""), ("GET", "/events"), ("POST", "/heal"), ("DELETE", "")):
            resp = api(method, path + suffix)
            assert resp.status_code == 404, (method, path + suffix)
            assert error_of(resp)["code"] in ("instance_not_found", "not_found")
    unknown = api.get(f"/instances/{owner}/{uuid.uuid4()}")
    foreign = api.get(f"/instances/{stranger}/{instance_id}")
    assert unknown.get_json() == foreign.get_json(), "another tenant's instance looks unknown"


def test_task_state_is_the_celery_state_only(api):
    task_id = provision(api, tenant_name())["task_id"]
    assert api.get(f"/tasks/{task_id}").get_json() == {
        "task_id": task_id,
        "state": "PENDING",
        "ready": False,
    }
    assert api.get("/tasks/not-a-task-id").status_code == 404


# --- teardown ----------------------------------------------------------------------------------


def test_teardown_validates_its_mode_and_is_idempotent(api, registry, broker):
    tenant = tenant_name()
    instance_id = provision(api, tenant)["instance"]["id"]
    path = f"/instances/{tenant}/{instance_id}"

    for query in ({"mode": "destroy"}, {"mode": ""}, {"force": "1"}):
        resp = api.delete(path, query_string=query)
        assert resp.status_code == 422
        assert registry.get(uuid.UUID(instance_id)).status is Status.PENDING

    first = api.delete(path, headers={"X-Request-Id": "teardown-1"})
    assert first.status_code == 202
    body = first.get_json()
    assert body["instance"]["status"] == "tearing_down"
    headers, (args, kwargs, _) = queued(broker, body["task_id"])[0]
    assert headers["task"] == TASK_TEARDOWN
    assert headers["request_id"] == "teardown-1"
    assert args[0] == instance_id and kwargs == {}

    again = api.delete(path, query_string={"mode": "retire"})
    assert again.status_code == 202
    assert again.get_json()["task_id"] == body["task_id"]
    assert registry.get(uuid.UUID(instance_id)).teardown_mode == "retire"

    registry.transition(uuid.UUID(instance_id), Status.TEARING_DOWN, Status.RETIRED, "VM deleted")
    retired = api.delete(path)
    assert retired.status_code == 202
    assert retired.get_json()["task_id"] is None
    assert retired.get_json()["instance"]["status"] == "retired"


# --- the live guest view and heal --------------------------------------------------------------


def test_the_guest_view_and_heal_reach_a_real_guest(api, registry, simulator, settings):
    vm = simulator.admin(
        "POST",
        "/cloud/vms",
        json={
            "folder_id": f"{PREFIX}-folder",
            "name": f"api-{secrets.token_hex(4)}",
            "labels": {},
            "guest": True,
        },
    )
    try:
        tenant = tenant_name()
        instance = make_ready(registry, tenant, vm["address"])
        path = f"/instances/{tenant}/{instance.id}"

        def healthy():
            guest = api.get(path).get_json()["guest"]
            return guest if guest["health"] else None

        guest = wait_until(healthy, 15, interval=0.1, what="the simulated guest to boot")
        assert guest["reachable"] is True and guest["error"] is None
        assert guest["health"]["status"] == "ok"
        detail = api.get(path).get_json()
        assert detail["entry_points"] == {
            "opencode_url": f"http://{vm['address']}:4096",
            "agent_url": f"http://{vm['address']}:{settings.agent_port}",
        }

        resp = api.post(path + "/heal")
        assert resp.status_code == 200
        report = resp.get_json()
        assert report["reachable"] is True and report["error"] is None
        assert report["heal"]["status"] == "healthy"
    finally:
        simulator.admin("DELETE", f"/cloud/vms/{vm['id']}")


def test_an_unreachable_guest_is_reported_not_raised(api, registry):
    tenant = tenant_name()
    instance = make_ready(registry, tenant, UNREACHABLE_ADDRESS)
    path = f"/instances/{tenant}/{instance.id}"

    guest = api.get(path).get_json()["guest"]
    assert guest["reachable"] is False and guest["health"] is None
    assert UNREACHABLE_ADDRESS in guest["error"]

    report = api.post(path + "/heal").get_json()
    assert report["reachable"] is False and report["heal"] is None
    assert UNREACHABLE_ADDRESS in report["error"]


def test_heal_needs_a_ready_instance_and_accepts_only_an_empty_body(api, registry):
    tenant = tenant_name()
    instance_id = provision(api, tenant)["instance"]["id"]
    path = f"/instances/{tenant}/{instance_id}/heal"
    resp = api.post(path)
    assert resp.status_code == 409
    assert error_of(resp) == {
        "code": "instance_not_ready",
        "message": "heal needs an instance with a VM (initializing, ready, failed or lost, with "
        "an address); this one is pending with no address",
        "details": {"status": "pending"},
    }
    assert api.post(path, json={}).status_code == 409
    assert api.post(path, json={"force": True}).status_code == 422
    assert api.post(path, data="{", content_type="application/json").status_code == 400


@pytest.mark.parametrize("status", [Status.INITIALIZING, Status.FAILED, Status.LOST])
def test_heal_reaches_the_guest_of_any_instance_with_a_vm(api, registry, status):
    """Not only ready: a stuck init, a failure that left its VM, a lost VM that still answers."""
    tenant = tenant_name()
    instance, _ = registry.create(tenant)
    registry.transition(instance.id, Status.PENDING, Status.PROVISIONING, "test")
    registry.transition(
        instance.id,
        Status.PROVISIONING,
        Status.INITIALIZING,
        "test",
        address=UNREACHABLE_ADDRESS,
    )
    if status is Status.LOST:
        registry.transition(instance.id, Status.INITIALIZING, Status.READY, "test")
        registry.transition(instance.id, Status.READY, Status.LOST, "test")
    elif status is not Status.INITIALIZING:
        registry.transition(instance.id, Status.INITIALIZING, status, "test")
    resp = api.post(f"/instances/{tenant}/{instance.id}/heal")
    assert resp.status_code == 200, resp.get_data(as_text=True)
    # The guest was asked: the answer is the guest's (here: unreachable), not a 409.
    assert resp.get_json()["reachable"] is False
    assert UNREACHABLE_ADDRESS in resp.get_json()["error"]


def test_the_detail_shows_the_forge_registration_summary_from_init(api, registry):
    tenant = tenant_name()
    instance = make_ready(registry, tenant, UNREACHABLE_ADDRESS)
    path = f"/instances/{tenant}/{instance.id}"
    assert api.get(path).get_json()["forges"] == []
    summary = [
        {"name": "github", "host": "github.com", "registered": True},
        {"name": "own", "host": None, "registered": False},
    ]
    registry.transition(instance.id, Status.READY, Status.LOST, "test", forges=summary)
    assert api.get(path).get_json()["forges"] == summary


def test_heal_refuses_a_failed_instance_that_never_had_a_vm(api, registry):
    tenant = tenant_name()
    instance, _ = registry.create(tenant)
    registry.transition(instance.id, Status.PENDING, Status.FAILED, "test")
    resp = api.post(f"/instances/{tenant}/{instance.id}/heal")
    assert resp.status_code == 409
    assert error_of(resp)["details"] == {"status": "failed"}


# --- dependencies down -------------------------------------------------------------------------


@pytest.fixture
def api_without_redis(settings, registry):
    """A second gateway whose Redis (broker and results) is a closed port."""
    down = load_settings(
        {
            "DATABASE_URL": settings.database_url,
            "REDIS_URL": f"redis://127.0.0.1:{closed_port()}/0",
            "DARK_API_TOKENS": TOKEN,
        }
    )
    celery_app = make_celery(down)
    yield Api(create_app(down, registry=registry, celery_app=celery_app))
    celery_app.close()


def test_redis_down_makes_ready_and_task_state_503_with_retry_after(api_without_redis):
    resp = api_without_redis.get("/ready", auth=False)
    assert resp.status_code == 503
    assert resp.headers["Retry-After"].isdigit()
    assert error_of(resp)["details"] == {"postgres": "ok", "redis": "unavailable"}

    resp = api_without_redis.get(f"/tasks/{uuid.uuid4()}")
    assert resp.status_code == 503
    assert resp.headers["Retry-After"].isdigit()
    assert error_of(resp)["code"] == "result_backend_unavailable"


@pytest.mark.parametrize("key", [None, "order-7"], ids=["no_key", "idempotency_key"])
def test_redis_down_makes_provision_503_leaving_no_row_and_a_retry_makes_exactly_one(
    api_without_redis, api, registry, key
):
    tenant = tenant_name()
    headers = {"Idempotency-Key": key} if key else {}
    resp = api_without_redis.post("/instances", json={"tenant": tenant}, headers=headers)
    assert resp.status_code == 503
    assert resp.headers["Retry-After"].isdigit()
    assert error_of(resp)["code"] == "dispatch_unavailable"
    assert registry.list(tenant=tenant) == ([], None), "a 503 leaves no row behind"

    # The client retries once Redis is back (the gateway whose Redis is up).
    retried = provision(api, tenant, **headers)
    items, _ = registry.list(tenant=tenant)
    assert [str(i.id) for i in items] == [retried["instance"]["id"]]


def test_postgres_down_is_503_with_retry_after(settings):
    url = f"postgresql://postgres@127.0.0.1:{closed_port()}/dark"
    down = load_settings(
        {"DATABASE_URL": url, "REDIS_URL": settings.redis_url, "DARK_API_TOKENS": TOKEN}
    )
    # A pool that gives up after a second, so that the test does not wait out the default.
    pool = ConnectionPool(
        url, min_size=0, max_size=1, timeout=1, open=True, kwargs={"connect_timeout": 2}
    )
    celery_app = make_celery(down)
    api = Api(create_app(down, registry=PostgresFleetRegistry(pool), celery_app=celery_app))
    try:
        resp = api.get("/ready", auth=False)
        assert resp.status_code == 503
        assert resp.headers["Retry-After"].isdigit()
        assert error_of(resp)["details"] == {"postgres": "unavailable", "redis": "ok"}

        resp = api.get("/instances")
        assert resp.status_code == 503
        assert resp.headers["Retry-After"].isdigit()
        assert error_of(resp)["code"] == "registry_unavailable"
    finally:
        pool.close()
        celery_app.close()


# --- the error shape and the OpenAPI document ----------------------------------------------------


def test_http_errors_use_the_one_error_shape(api):
    resp = api.get("/no-such-route")
    assert resp.status_code == 404
    assert error_of(resp)["code"] == "not_found"

    resp = api("PUT", "/instances", json={"tenant": "acme"})
    assert resp.status_code == 405
    assert error_of(resp)["code"] == "method_not_allowed"
    assert "POST" in resp.headers["Allow"]


def test_openapi_documents_every_route_from_the_schemas(app, api):
    doc = api.get("/openapi.json", auth=False).get_json()
    assert doc["openapi"].startswith("3.")
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"

    routes = {}
    for rule in app.url_map.iter_rules():
        # The dashboard's pages (services/api/ui.py) and /docs (shared/web/docs.py) are HTML for
        # browsers, not part of the API.
        if rule.endpoint == "static" or rule.endpoint.startswith(("ui.", "docs.")):
            continue
        path = rule.rule.replace("<uuid:", "{").replace("<", "{").replace(">", "}")
        routes.setdefault(path, set()).update(m.lower() for m in rule.methods - {"HEAD", "OPTIONS"})
    # A path item holds its operations and, for a path with parameters, the "parameters".
    documented = {path: set(item) - {"parameters"} for path, item in doc["paths"].items()}
    assert documented == routes

    instance = doc["components"]["schemas"]["InstanceOut"]
    assert set(instance["properties"]) == INSTANCE_FIELDS
    assert all(prop.get("readOnly") for prop in instance["properties"].values())
    provision_body = doc["components"]["schemas"]["ProvisionRequest"]
    assert provision_body["required"] == ["tenant"]
    assert provision_body["additionalProperties"] is False


def test_the_document_states_the_tenant_rule_that_validation_enforces(api):
    doc = api.get("/openapi.json", auth=False).get_json()
    rule = {"minLength": 1, "maxLength": MAX_TENANT_LENGTH, "pattern": TENANT_PATTERN}

    parameters = [
        parameter
        for item in doc["paths"].values()
        for operation in [item, *(op for op in item.values() if isinstance(op, dict))]
        for parameter in operation.get("parameters", [])
        if parameter["name"] == "tenant"
    ]
    in_path = [p for p in parameters if p["in"] == "path"]
    # The instance, its events, heal, its wait, the invites (DELETEs share their path's parameters).
    assert len(in_path) == 5
    assert [p for p in parameters if p["in"] == "query"]  # GET /instances?tenant=
    for parameter in parameters:
        assert rule.items() <= parameter["schema"].items(), parameter
    body = doc["components"]["schemas"]["ProvisionRequest"]["properties"]["tenant"]
    assert rule.items() <= body.items()


# --- gunicorn ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_gunicorn_serves_the_app_with_json_logs_and_no_token_in_them(env, tmp_path):
    port = free_port()
    log_path = tmp_path / "gunicorn.log"
    proc = spawn(
        [
            str(VENV_BIN / "gunicorn"),
            "-c",
            "services/api/gunicorn.conf.py",
            "services.api.wsgi:app",
        ],
        env={**env, "DARK_BIND": f"127.0.0.1:{port}"},
        log_path=log_path,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: requests.get(base + "/health", timeout=1).ok, 30, what="gunicorn")
        auth = {"Authorization": f"Bearer {TOKEN}", "X-Request-Id": "gunicorn-smoke"}
        listed = requests.get(base + "/instances", headers=auth, timeout=10)
        assert listed.status_code == 200
        assert listed.json()["items"] is not None
        assert requests.get(base + "/instances", timeout=10).status_code == 401
    finally:
        stop_process(proc)
    lines = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    assert any(line["request_id"] == "gunicorn-smoke" for line in lines)
    assert TOKEN not in log_path.read_text()


def test_a_tenant_that_is_not_onboarded_is_refused_with_409_and_nothing_written(api, pg_pool):
    tenant = tenant_name("never", onboarded=False)
    before = count_rows(pg_pool)
    resp = api.post("/instances", json={"tenant": tenant})
    assert resp.status_code == 409
    assert error_of(resp)["code"] == "tenant_not_onboarded"
    assert "not onboarded" in error_of(resp)["message"]
    assert count_rows(pg_pool) == before


def test_tenants_lists_onboarding_state_and_live_vms_without_secrets(api, directory):
    onboarded = tenant_name("listed")
    provision(api, onboarded)
    offboarded = tenant_name("gone")
    directory.record_offboarded(offboarded)
    resp = api.get("/tenants")
    assert resp.status_code == 200
    items = {item["name"]: item for item in resp.get_json()["items"]}
    assert items[onboarded]["onboarded"] is True
    assert items[onboarded]["live_instances"] == 1
    assert items[onboarded]["secrets_version"] == 1
    assert items[offboarded]["onboarded"] is False
    assert items[offboarded]["live_instances"] == 0
    assert set(items[onboarded]) == {
        "name",
        "onboarded",
        "onboarded_at",
        "updated_at",
        "offboarded_at",
        "secrets_version",
        "live_instances",
        "invite",
    }
    assert items[onboarded]["invite"] == {"state": "none", "expires_at": None, "used_at": None}
    assert api.get("/tenants?secret=1").status_code == 422


def test_reconcile_runs_are_listed_newest_first_and_a_run_can_be_requested(api, broker, pg_pool):
    from shared.adapters.runs import PostgresReconcileRuns

    runs = PostgresReconcileRuns(pg_pool)
    first = runs.start(dry_run=True, trigger="test")
    runs.finish(
        first,
        outcome="dry_run",
        counts={"orphan": 1},
        actions=[{"kind": "orphan", "vm_id": "fhm1", "detail": "old"}],
        errors=[],
    )
    resp = api.get("/reconcile/runs?limit=5")
    assert resp.status_code == 200
    latest = resp.get_json()["items"][0]
    assert latest["id"] == first and latest["dry_run"] is True and latest["outcome"] == "dry_run"
    assert latest["counts"] == {"orphan": 1}
    assert latest["actions"][0]["kind"] == "orphan"
    assert api.get("/reconcile/runs?limit=0").status_code == 422

    resp = api.post("/reconcile", json={"dry_run": True})
    assert resp.status_code == 202
    task_id = resp.get_json()["task_id"]
    queued_runs = [
        _decode(raw)
        for raw in broker.lrange("dark.reconcile", 0, -1)
        if json.loads(raw)["headers"]["id"] == task_id
    ]
    assert len(queued_runs) == 1
    assert queued_runs[0][1][1] == {"trigger": "api", "dry_run": True, "confirm_destructive": 0}
    broker.delete("dark.reconcile")
    with pg_pool.connection() as conn:
        conn.execute("DELETE FROM reconcile_runs WHERE id = %s", (first,))
    assert api.post("/reconcile", json={"force": True}).status_code == 422


def test_an_operator_confirmation_of_destructive_actions_travels_with_the_run_request(api, broker):
    resp = api.post("/reconcile", json={"confirm_destructive": 12})
    assert resp.status_code == 202
    task_id = resp.get_json()["task_id"]
    try:
        (kwargs,) = [
            _decode(raw)[1][1]
            for raw in broker.lrange("dark.reconcile", 0, -1)
            if json.loads(raw)["headers"]["id"] == task_id
        ]
    finally:
        broker.delete("dark.reconcile")
    assert kwargs == {"trigger": "api", "dry_run": False, "confirm_destructive": 12}


@pytest.mark.parametrize("bad", [-1, "12", 1.5, True, None, 10**9])
def test_a_confirmation_that_is_not_a_sane_count_is_refused_with_422(api, broker, bad):
    waiting = broker.llen("dark.reconcile")
    resp = api.post("/reconcile", json={"confirm_destructive": bad})
    assert resp.status_code == 422, resp.get_json()
    assert "confirm_destructive" in error_of(resp)["details"]["fields"]
    assert broker.llen("dark.reconcile") == waiting
