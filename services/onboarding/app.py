"""The onboarding service's entry point: `create_app(settings)`, via shared.bootstrap.

Nothing here does I/O at import. Collaborators can be passed in (tests hand in adapters on their own
pool or their own OpenBao); whatever is not passed is built from the settings. Per request: a
request id, then the caller (services/onboarding/auth.py: an admin token from
DARK_ONBOARDING_TOKENS or a tenant's invite; a gateway token is refused), then the view; one JSON
log line when the response leaves, and security headers on every response.
"""

import logging

from flask import Flask
from werkzeug.routing import PathConverter

from services.onboarding.auth import install_onboarding_auth
from services.onboarding.openapi import DOCUMENT
from services.onboarding.views import bp
from shared.bootstrap import build_onboarding
from shared.domain.errors import (
    InvalidTenantName,
    RegistryUnavailable,
    SecretsBackendUnavailable,
    SecretsConflict,
    SecretsMissing,
)
from shared.domain.tenant_records import SecretsVersionMismatch, TenantHasLiveInstances
from shared.settings import Settings
from shared.web import (
    App,
    install_docs,
    install_error_handler,
    install_request_hooks,
    install_security_headers,
    new_api,
)

log = logging.getLogger("dark.onboarding")

MAX_BODY_BYTES = 64 * 1024

# Most specific class first: the first match wins.
DOMAIN_ERRORS = (
    (InvalidTenantName, 422, "invalid_tenant"),
    (SecretsVersionMismatch, 412, "version_mismatch"),
    (SecretsConflict, 409, "concurrent_update"),
    (TenantHasLiveInstances, 409, "tenant_has_live_instances"),
    (SecretsMissing, 404, "not_onboarded"),
    (SecretsBackendUnavailable, 503, "secrets_backend_unavailable"),
    (RegistryUnavailable, 503, "registry_unavailable"),
)


class AnyTenantText(PathConverter):
    """The tenant path segment, matching anything (even '/', control characters or nothing).

    Routing would answer 404 for those; matching them lets the tenant-name rules
    (docs/ARCHITECTURE.md#tenant-names) answer 422 with the reason.
    """

    regex = r"[\s\S]*?"
    # Werkzeug infers "matches within one path part" from the regex lacking a '/'; this one
    # spans parts.
    part_isolating = False


def create_app(
    settings: Settings,
    *,
    secrets=None,
    tenants=None,
    fleet_counts=None,
    bundles=None,
    invites=None,
) -> Flask:
    built = build_onboarding(
        settings,
        secrets=secrets,
        tenants=tenants,
        fleet_counts=fleet_counts,
        bundles=bundles,
        invites=invites,
    )
    app = App(__name__)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    # `/tenants//secrets` must reach the view (an empty name is a 422), not redirect elsewhere.
    app.url_map.merge_slashes = False
    app.url_map.converters["tenant"] = AnyTenantText
    app.extensions["dark_onboarding"] = built
    install_error_handler(app, DOMAIN_ERRORS, log)
    # Order matters: the request id first, so that a 401 is logged and answered with it.
    install_request_hooks(app, log)
    # Admin tokens (DARK_ONBOARDING_TOKENS) or a tenant's live invite; the page's own script and
    # style, and the page itself (a @public view), need neither.
    install_onboarding_auth(app, settings.onboarding_tokens, built.invites)
    install_security_headers(app)
    # The routes and, from their declarations, the OpenAPI document (see openapi.py).
    api = new_api(app, **DOCUMENT)
    api.register_blueprint(bp)
    # /docs: the document above in Swagger UI (shared/web/docs.py).
    install_docs(app, DOCUMENT["title"])
    return app
