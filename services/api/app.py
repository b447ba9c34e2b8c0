"""The gateway's composition root (STYLE.md 3): `create_app(settings)` builds everything.

Nothing here does I/O at import. The collaborators can be passed in (tests hand in a registry on
their own pool, or a Celery app on their own Redis DB); whatever is not passed is built from the
settings. Per request: a request id (the caller's X-Request-Id when well-formed), then the token
(or dashboard session) check, then the view; when the response leaves, one JSON log line and the
request's metrics (services/api/metrics.py).
"""

import logging
import time

import psycopg
import redis
from flask import Flask, g, request
from redis.backoff import NoBackoff
from redis.retry import Retry

from services.api.auth import install_operator_auth
from services.api.errors import install_error_handler
from services.api.metrics import install_metrics, record_request
from services.api.openapi import build_openapi
from services.api.ui import install_ui
from services.api.views import Gateway, bp
from shared.adapters.db import make_pool
from shared.adapters.fleet_stats import PostgresFleetStats
from shared.adapters.guest import HttpGuestAgent
from shared.adapters.registry import PostgresFleetRegistry
from shared.adapters.runs import PostgresReconcileRuns
from shared.adapters.tenants import PostgresTenantDirectory
from shared.celery_app import make_celery, producer_app
from shared.fleet import CeleryDispatcher, FleetService
from shared.logs import new_request_id, request_id_var
from shared.settings import Settings

log = logging.getLogger("dark.api")

MAX_BODY_BYTES = 64 * 1024
# /ready answers within a few seconds even when a dependency black-holes packets. libpq does not
# honour a connect timeout under 2 s.
PROBE_TIMEOUT_SECS = 2


def create_app(
    settings: Settings,
    *,
    registry=None,
    fleet=None,
    guest=None,
    celery_app=None,
    tenants=None,
) -> Flask:
    celery_app = celery_app or make_celery(settings)
    pool = make_pool(settings.database_url)
    registry = registry or PostgresFleetRegistry(pool)
    tenants = tenants or PostgresTenantDirectory(pool)
    if fleet is None:
        fleet = FleetService(
            registry,
            CeleryDispatcher(celery_app),
            max_instances_per_tenant=settings.max_instances_per_tenant,
            tenants=tenants,
        )
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.extensions["dark"] = Gateway(
        registry=registry,
        tenants=tenants,
        runs=PostgresReconcileRuns(pool),
        fleet=fleet,
        guest=guest or HttpGuestAgent.from_settings(settings),
        celery=celery_app,
        producer=producer_app(celery_app),
        agent_port=settings.agent_port,
        probes={
            "postgres": _postgres_probe(settings.database_url),
            "redis": _redis_probe(celery_app.conf.broker_url),
        },
        openapi=build_openapi(),
    )
    install_error_handler(app)
    # Order matters: the request id first, so that a 401 is logged and answered with it.
    app.before_request(_begin_request)
    install_operator_auth(app, settings)
    app.after_request(_log_request)
    app.teardown_request(_end_request)
    app.register_blueprint(bp)
    install_metrics(app, settings, PostgresFleetStats(pool))
    install_ui(app, settings)
    return app


def _begin_request() -> None:
    g.started = time.perf_counter()
    g.request_id = new_request_id(request.headers.get("X-Request-Id"))
    g.request_id_token = request_id_var.set(g.request_id)


def _log_request(response):
    response.headers["X-Request-Id"] = g.request_id
    # The route template, not the path: one line per request, with no headers, query or body.
    route = request.url_rule.rule if request.url_rule else "-"
    seconds = time.perf_counter() - g.started
    log.info(
        "http method=%s route=%s status=%d duration_ms=%.1f",
        request.method,
        route,
        response.status_code,
        seconds * 1000,
    )
    record_request(request.method, route, response.status_code, seconds)
    return response


def _end_request(_exc: BaseException | None) -> None:
    token = g.pop("request_id_token", None)
    if token is not None:
        request_id_var.reset(token)


def _postgres_probe(database_url: str):
    def probe() -> None:
        # A connection of its own: readiness says whether Postgres answers, not whether the
        # registry's pool happens to hold a live connection.
        with psycopg.connect(
            database_url,
            connect_timeout=PROBE_TIMEOUT_SECS,
            options=f"-c statement_timeout={PROBE_TIMEOUT_SECS * 1000}",
        ) as conn:
            conn.execute("SELECT 1")

    return probe


def _redis_probe(broker_url: str):
    # The broker the tasks go to; built once, connects lazily, and never retries: a probe that
    # retries with backoff answers late exactly when it matters.
    client = redis.Redis.from_url(
        broker_url,
        socket_connect_timeout=PROBE_TIMEOUT_SECS,
        socket_timeout=PROBE_TIMEOUT_SECS,
        retry=Retry(NoBackoff(), 0),
    )

    def probe() -> None:
        client.ping()

    return probe
