"""The gateway's entry point: `create_app(settings)`, built by shared.bootstrap.

Nothing here does I/O at import. The collaborators can be passed in (tests hand in a registry on
their own pool, or a Celery app on their own Redis DB); whatever is not passed is built from the
settings. Per request: a request id (the caller's X-Request-Id when well-formed), then the token
(or dashboard session) check, then the view; when the response leaves, one JSON log line, the
request's metrics (services/api/metrics.py), and security headers. Every failure leaves in
shared/web/errors.py's one error shape.
"""

import logging

from flask import Flask

from services.api.auth import install_operator_auth
from services.api.metrics import install_metrics, record_request
from services.api.openapi import DOCUMENT, METRICS_OPERATIONS
from services.api.ui import install_ui
from services.api.views import bp
from shared.bootstrap import build_gateway
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
from shared.settings import Settings
from shared.web import (
    App,
    install_docs,
    install_error_handler,
    install_request_hooks,
    install_security_headers,
    new_api,
)

log = logging.getLogger("dark.api")

MAX_BODY_BYTES = 64 * 1024

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
    stats=None,
    invites=None,
) -> Flask:
    built = build_gateway(
        settings,
        registry=registry,
        fleet=fleet,
        guest=guest,
        celery_app=celery_app,
        tenants=tenants,
        stats=stats,
        invites=invites,
    )
    app = App(__name__)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    # What the views use (services/api/views.py's `_gateway()`).
    app.extensions["dark"] = built
    install_error_handler(app, DOMAIN_ERRORS, log)
    # Order matters: the request id first, so that a 401 is logged and answered with it.
    install_request_hooks(app, log, observe=record_request)
    install_operator_auth(app, settings, built.sessions)
    # On every response; the dashboard's pages keep the policy they set (services/api/ui.py).
    install_security_headers(app)
    # The routes and, from their declarations, the OpenAPI document (services/api/openapi.py).
    api = new_api(app, **DOCUMENT)
    api.register_blueprint(bp)
    install_metrics(app, settings, built.stats)
    api.spec.path(rule=next(app.url_map.iter_rules("metrics")), operations=METRICS_OPERATIONS)
    install_ui(app, settings)
    # /docs: the document above in Swagger UI (shared/web/docs.py).
    install_docs(app, DOCUMENT["title"])
    return app
