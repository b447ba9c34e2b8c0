"""The gateway's composition root (docs/ARCHITECTURE.md#conventions): `create_app(settings)` builds
everything.

Nothing here does I/O at import. The collaborators can be passed in (tests hand in a registry on
their own pool, or a Celery app on their own Redis DB); whatever is not passed is built from the
settings. Per request: a request id (the caller's X-Request-Id when well-formed), then the token
(or dashboard session) check, then the view; when the response leaves, one JSON log line, the
request's metrics (services/api/metrics.py), and security headers. Every failure leaves in
shared/web/errors.py's one error shape.
"""

import logging

import psycopg
import redis
from flask import Flask
from redis.backoff import NoBackoff
from redis.retry import Retry

from services.api.auth import install_operator_auth
from services.api.metrics import install_metrics, record_request
from services.api.openapi import DOCUMENT, METRICS_OPERATIONS
from services.api.ui import install_ui
from services.api.views import Gateway, bp
from shared.adapters.db import make_pool
from shared.adapters.fleet_stats import PostgresFleetStats
from shared.adapters.guest import HttpGuestAgent
from shared.adapters.registry import PostgresFleetRegistry
from shared.adapters.runs import PostgresReconcileRuns
from shared.adapters.tenants import PostgresTenantDirectory
from shared.celery_app import make_celery, producer_app
from shared.domain.errors import (
    DispatchUnavailable,
    IllegalTransition,
    InstanceNotFound,
    InvalidCursor,
    InvalidTenantName,
    QuotaExceeded,
    RegistryUnavailable,
    TenantNotOnboarded,
    TransitionConflict,
)
from shared.service_layer.fleet import CeleryDispatcher, FleetService
from shared.settings import Settings
from shared.web import (
    install_error_handler,
    install_request_hooks,
    install_security_headers,
    new_api,
)

log = logging.getLogger("dark.api")

MAX_BODY_BYTES = 64 * 1024
# /ready answers within a few seconds even when a dependency black-holes packets. libpq does not
# honour a connect timeout under 2 s.
PROBE_TIMEOUT_SECS = 2

# Most specific class first: the first match wins.
DOMAIN_ERRORS = (
    (InvalidTenantName, 422, "invalid_tenant"),
    (InvalidCursor, 422, "invalid_cursor"),
    (InstanceNotFound, 404, "instance_not_found"),
    (IllegalTransition, 409, "illegal_transition"),
    (TransitionConflict, 409, "state_conflict"),
    (QuotaExceeded, 409, "quota_exceeded"),
    (TenantNotOnboarded, 409, "tenant_not_onboarded"),
    (RegistryUnavailable, 503, "registry_unavailable"),
    (DispatchUnavailable, 503, "dispatch_unavailable"),
)


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
    )
    install_error_handler(app, DOMAIN_ERRORS, log)
    # Order matters: the request id first, so that a 401 is logged and answered with it.
    install_request_hooks(app, log, observe=record_request)
    install_operator_auth(app, settings)
    # On every response; the dashboard's pages keep the policy they set (services/api/ui.py).
    install_security_headers(app)
    # The routes and, from their declarations, the OpenAPI document (services/api/openapi.py).
    api = new_api(app, **DOCUMENT)
    api.register_blueprint(bp)
    install_metrics(app, settings, PostgresFleetStats(pool))
    api.spec.path(rule=next(app.url_map.iter_rules("metrics")), operations=METRICS_OPERATIONS)
    install_ui(app, settings)
    return app


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
