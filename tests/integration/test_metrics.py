"""The gateway's /metrics against real Postgres: through the Flask test client, and through a real
gunicorn whose two workers must add up to one set of counts (prometheus_client multiprocess mode).

Every body is parsed with prometheus_client's own parser. The session's database is shared with
other modules, so the Postgres-derived figures are checked as differences between two scrapes: the
`client` reads them uncached, so that two scrapes in a row see a change; the apps built as the
gateway builds itself (`make_app`) cache them for 15 s, on a connection of their own.
"""

import secrets
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from prometheus_client.multiprocess import MultiProcessCollector

from services.api.app import create_app
from shared.adapters import db
from shared.adapters.fleet_stats import CachedFleetStats, PostgresFleetStats
from shared.adapters.registry import PostgresFleetRegistry
from shared.adapters.runs import PostgresReconcileRuns
from shared.celery_app import make_celery
from shared.domain.lifecycle import Status
from shared.settings import load_settings
from tests.support.processes import VENV_BIN, free_port, spawn, stop_process, wait_until
from tests.support.prometheus import matching, parse, total

TOKEN = "metrics-test-token-" + secrets.token_hex(8)
PREFIX = f"metricstest-{secrets.token_hex(4)}"
REMOTE = {"REMOTE_ADDR": "10.1.2.3"}
BEARER = {"Authorization": f"Bearer {TOKEN}"}


def tenant_name() -> str:
    return f"{PREFIX}-{secrets.token_hex(3)}"


@pytest.fixture(scope="module")
def env(migrated_database_url, redis_url):
    return {
        "DATABASE_URL": migrated_database_url,
        "REDIS_URL": redis_url,
        "DARK_API_TOKENS": TOKEN,
    }


@pytest.fixture(scope="module")
def registry(pg_pool):
    yield PostgresFleetRegistry(pg_pool)
    with pg_pool.connection() as conn:
        conn.execute("DELETE FROM instances WHERE tenant LIKE %s", (PREFIX + "%",))


def make_app(env: dict, stats=None, **overrides: str):
    settings = load_settings({**env, **overrides})
    celery_app = make_celery(settings)
    return create_app(settings, celery_app=celery_app, stats=stats), celery_app


@pytest.fixture(scope="module")
def client(env):
    stats = PostgresFleetStats(env["DATABASE_URL"])
    app, celery_app = make_app(env, stats=stats)
    yield app.test_client()
    celery_app.close()
    stats.close()


def scrape(client, headers=BEARER, **kwargs) -> dict:
    resp = client.get("/metrics", headers=headers, **kwargs)
    assert resp.status_code == 200, resp.get_data(as_text=True)
    assert resp.content_type.startswith("text/plain")
    return parse(resp.get_data(as_text=True))


def error_of(resp) -> dict:
    body = resp.get_json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message", "details"}
    return body["error"]


# --- HTTP requests --------------------------------------------------------------------------------


def test_requests_are_counted_by_route_and_status_with_latency(client):
    before = scrape(client)
    for _ in range(3):
        assert client.get("/health").status_code == 200
    assert client.get(f"/instances/acme/{uuid.uuid4()}").status_code == 401
    assert client.get("/no-such-route").status_code == 401
    after = scrape(client)

    def moved(name, **labels):
        return total(after, name, **labels) - total(before, name, **labels)

    requests_total = "dark_http_requests_total"
    assert moved(requests_total, method="GET", route="/health", status="200") == 3
    # The URL rule, not the path: one series for every instance.
    route = "/instances/<tenant>/<uuid:instance_id>"
    assert moved(requests_total, method="GET", route=route, status="401") == 1
    assert moved(requests_total, route="-", status="401") == 1
    assert moved("dark_http_request_duration_seconds_count", route="/health") == 3
    assert moved("dark_http_request_duration_seconds_bucket", route="/health", le="+Inf") == 3
    assert total(after, "dark_metrics_db_up") == 1
    for name, family in after.items():
        assert name.startswith("dark_"), name
        assert family.documentation, f"{name} has HELP text"


def test_an_unknown_method_is_not_a_label_value_of_its_own(client):
    before = scrape(client)
    assert client.open("/health", method="BREW", headers=BEARER).status_code == 405
    after = scrape(client)
    assert not matching(after, "dark_http_requests_total", method="BREW")
    assert (
        total(after, "dark_http_requests_total", method="other", status="405")
        - total(before, "dark_http_requests_total", method="other", status="405")
        == 1
    )


# --- facts from Postgres --------------------------------------------------------------------------


def test_instances_by_status_and_transitions_move_with_the_registry(client, registry):
    before = scrape(client)
    instance, _ = registry.create(tenant_name())
    created = scrape(client)
    registry.transition(instance.id, Status.PENDING, Status.PROVISIONING, "test")
    moved_on = scrape(client)

    def instances(families, status):
        return total(families, "dark_instances", status=status)

    def transitions(families, src, dst):
        return total(families, "dark_instance_transitions_total", from_status=src, to_status=dst)

    assert instances(created, "pending") == instances(before, "pending") + 1
    assert transitions(created, "none", "pending") == transitions(before, "none", "pending") + 1
    assert instances(moved_on, "pending") == instances(before, "pending")
    assert instances(moved_on, "provisioning") == instances(before, "provisioning") + 1
    assert (
        transitions(moved_on, "pending", "provisioning")
        == transitions(before, "pending", "provisioning") + 1
    )
    # Every status is reported, so that a dashboard shows 0 rather than nothing.
    assert {s.labels["status"] for s in matching(moved_on, "dark_instances")} == {
        s.value for s in Status
    }


def test_time_in_a_status_is_bucketed_by_postgres(client, registry, pg_pool):
    instance, _ = registry.create(tenant_name())
    with pg_pool.connection() as conn:
        conn.execute(
            "UPDATE instance_events SET at = at - interval '45 seconds' WHERE instance_id = %s",
            (instance.id,),
        )
    before = scrape(client)
    registry.transition(instance.id, Status.PENDING, Status.PROVISIONING, "test")
    after = scrape(client)

    def moved(suffix, **labels):
        name = "dark_instance_status_duration_seconds" + suffix
        return total(after, name, status="pending", **labels) - total(
            before, name, status="pending", **labels
        )

    assert moved("_bucket", le="30.0") == 0
    assert moved("_bucket", le="60.0") == 1
    assert moved("_bucket", le="+Inf") == 1
    assert moved("_count") == 1
    assert 45 <= moved("_sum") < 50
    # The instance is in provisioning now: a status not yet left has no duration.
    assert moved("_count") == moved("_bucket", le="+Inf")


def test_reconcile_actions_count_runs_that_were_not_dry_runs(client, pg_pool):
    runs = PostgresReconcileRuns(pg_pool)
    before = scrape(client)
    applied = runs.start(dry_run=False, trigger="test")
    runs.finish(
        applied,
        outcome="applied",
        counts={"orphan": 1, "stuck": 1},
        actions=[{"kind": "orphan", "result": "deleted"}, {"kind": "stuck", "result": "failed"}],
        errors=[],
    )
    dry = runs.start(dry_run=True, trigger="test")
    runs.finish(
        dry,
        outcome="dry_run",
        counts={"orphan": 1},
        actions=[{"kind": "orphan", "result": "dry run: nothing done"}],
        errors=[],
    )
    try:
        after = scrape(client)
    finally:
        with pg_pool.connection() as conn:
            conn.execute("DELETE FROM reconcile_runs WHERE id IN (%s, %s)", (applied, dry))

    def moved(name, **labels):
        return total(after, name, **labels) - total(before, name, **labels)

    assert moved("dark_reconcile_actions_total", kind="orphan") == 1
    assert moved("dark_reconcile_actions_total", kind="stuck") == 1
    assert moved("dark_reconcile_actions_total", kind="lost") == 0
    assert matching(after, "dark_reconcile_actions_total", kind="respawn"), "every kind is listed"
    assert moved("dark_reconcile_runs_total", dry_run="false") == 1
    assert moved("dark_reconcile_runs_total", dry_run="true") == 1


def test_a_refused_newest_run_raises_the_blast_radius_gauges_until_a_run_is_applied(
    client, pg_pool
):
    runs = PostgresReconcileRuns(pg_pool)
    before = scrape(client)
    held = {"kind": "orphan", "result": "held back: over the cap", "held_back": True}
    done = {"kind": "stuck", "result": "failed", "held_back": False}
    refused = runs.start(dry_run=False, trigger="test")
    runs.finish(
        refused,
        outcome="refused",
        counts={"orphan": 12, "stuck": 1, "held_back": 12},
        actions=[held] * 12 + [done],
        errors=[],
    )
    applied = None
    try:
        during = scrape(client)
        applied = runs.start(dry_run=False, trigger="test")
        runs.finish(applied, outcome="applied", counts={}, actions=[], errors=[])
        after = scrape(client)
    finally:
        with pg_pool.connection() as conn:
            conn.execute("DELETE FROM reconcile_runs WHERE id IN (%s, %s)", (refused, applied))

    assert total(during, "dark_reconcile_refused") == 1
    assert total(during, "dark_reconcile_held_back") == 12
    assert total(after, "dark_reconcile_refused") == 0
    assert total(after, "dark_reconcile_held_back") == 0
    # What was held back was not done: only the stuck row counts as an action taken.
    assert total(during, "dark_reconcile_actions_total", kind="orphan") == total(
        before, "dark_reconcile_actions_total", kind="orphan"
    )
    assert (
        total(during, "dark_reconcile_actions_total", kind="stuck")
        == total(before, "dark_reconcile_actions_total", kind="stuck") + 1
    )


def test_postgres_down_leaves_out_its_figures_and_never_fails_the_scrape(env):
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/dark"
    app, celery_app = make_app(env, DATABASE_URL=url)
    try:
        client = app.test_client()
        assert client.get("/health").status_code == 200
        families = scrape(client)
    finally:
        celery_app.close()
    assert total(families, "dark_metrics_db_up") == 0
    assert total(families, "dark_http_requests_total", route="/health") == 1
    assert not [name for name in families if name.startswith(("dark_instance", "dark_reconcile"))]


# --- access ---------------------------------------------------------------------------------------


LOOPBACK = ["127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1"]


@pytest.mark.parametrize("remote_addr", LOOPBACK)
def test_loopback_needs_the_token_unless_the_exemption_is_on(client, env, remote_addr):
    resp = client.get("/metrics", environ_base={"REMOTE_ADDR": remote_addr})
    assert resp.status_code == 401
    assert error_of(resp)["code"] == "unauthorized"
    assert "dark_" not in resp.get_data(as_text=True)

    app, celery_app = make_app(env, DARK_METRICS_LOOPBACK_OPEN="true")
    try:
        scrape(app.test_client(), headers={}, environ_base={"REMOTE_ADDR": remote_addr})
        resp = app.test_client().get("/metrics", environ_base=REMOTE)
        assert resp.status_code == 401, "the exemption is for loopback only"
    finally:
        celery_app.close()


@pytest.mark.parametrize(
    "authorization", [None, "Bearer metrics-test-wrong-0123456789", f"Basic {TOKEN}"]
)
def test_from_elsewhere_metrics_need_the_operator_token(client, authorization):
    headers = {"Authorization": authorization} if authorization else {}
    resp = client.get("/metrics", environ_base=REMOTE, headers=headers)
    assert resp.status_code == 401
    assert error_of(resp)["code"] == "unauthorized"
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    assert "dark_" not in resp.get_data(as_text=True)

    scrape(client, environ_base=REMOTE, headers={"Authorization": f"Bearer {TOKEN}"})


# --- the fleet figures: cached, on a connection of their own -------------------------------------


def fleet_queries(app) -> int:
    cached = app.extensions["dark_metrics"].stats
    assert isinstance(cached, CachedFleetStats)
    return cached.source.snapshots_taken


def test_scrapes_within_15_s_query_postgres_once(env, registry):
    app, celery_app = make_app(env)
    try:
        client = app.test_client()
        first = scrape(client)
        registry.create(tenant_name())
        with ThreadPoolExecutor(4) as pool:
            concurrent = list(pool.map(lambda _: scrape(app.test_client()), range(4)))
        assert fleet_queries(app) == 1
    finally:
        celery_app.close()
        app.extensions["dark_metrics"].stats.source.close()
    # The figures of the one computation, not a newer one.
    for later in concurrent:
        assert total(later, "dark_instances", status="pending") == total(
            first, "dark_instances", status="pending"
        )


def test_a_scrape_takes_nothing_from_the_api_pool(env, monkeypatch):
    pools = []
    real_make_pool = db.make_pool

    def recording_make_pool(*args, **kwargs):
        pools.append(real_make_pool(*args, **kwargs))
        return pools[-1]

    monkeypatch.setattr(db, "make_pool", recording_make_pool)
    app, celery_app = make_app(env)
    # The API's pools: the one for transactions and the list's read pool.
    assert len(pools) == 2
    held = []
    try:
        # Every connection of the API's pools taken, as by requests stuck on a slow query.
        held = [(pool, pool.getconn()) for pool in pools for _ in range(pool.max_size)]
        requested = [pool.get_stats().get("requests_num", 0) for pool in pools]
        families = scrape(app.test_client())
        assert [pool.get_stats().get("requests_num", 0) for pool in pools] == requested
    finally:
        for pool, conn in held:
            pool.putconn(conn)
        celery_app.close()
        app.extensions["dark_metrics"].stats.source.close()
        for pool in pools:
            pool.close()
    assert total(families, "dark_metrics_db_up") == 1


# --- gunicorn: two workers, one set of counts -----------------------------------------------------


def counts_by_worker(metrics_dir, route: str) -> dict[str, float]:
    """Each worker's own count of requests to `route`, read from its file in the directory."""
    counts = {}
    for path in metrics_dir.glob("counter_*.db"):
        merged = {m.name: m for m in MultiProcessCollector.merge([str(path)])}
        counts[path.name] = total(merged, "dark_http_requests_total", route=route)
    return counts


@pytest.mark.slow
def test_gunicorn_workers_add_up_to_one_count_in_every_scrape(env, tmp_path):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    # TMPDIR places gunicorn.conf.py's private metrics directory where the test can look into it.
    proc = spawn(
        [
            str(VENV_BIN / "gunicorn"),
            "-c",
            "services/api/gunicorn.conf.py",
            "services.api.wsgi:app",
        ],
        env={**env, "DARK_BIND": f"127.0.0.1:{port}", "TMPDIR": str(tmp_path)},
        log_path=tmp_path / "gunicorn.log",
    )
    try:
        wait_until(lambda: requests.get(base + "/health", timeout=1).ok, 30, what="gunicorn")
        (metrics_dir,) = tmp_path.glob("dark-api-metrics-*")
        sent = 0

        def both_workers_answered() -> bool:
            # Fresh connections from several threads at once, until each worker has taken some
            # (the second may still be loading the app when the first answers).
            nonlocal sent
            with ThreadPoolExecutor(8) as pool:
                answers = list(
                    pool.map(
                        lambda _: requests.get(base + "/openapi.json", timeout=10).status_code,
                        range(8),
                    )
                )
            assert answers == [200] * 8
            sent += 8
            return len([n for n in counts_by_worker(metrics_dir, "/openapi.json").values() if n])

        wait_until(lambda: both_workers_answered() == 2, 30, what="both workers to answer")
        assert sum(counts_by_worker(metrics_dir, "/openapi.json").values()) == sent

        for _ in range(4):
            resp = requests.get(base + "/metrics", headers=BEARER, timeout=10)
            assert resp.status_code == 200
            families = parse(resp.text)
            assert total(families, "dark_http_requests_total", route="/openapi.json") == sent
            assert total(families, "dark_metrics_db_up") == 1
    finally:
        stop_process(proc)
    assert not metrics_dir.exists(), "the private metrics directory is removed at exit"
