"""The onboarding routes (docs/ARCHITECTURE.md#http-contracts): decode the request, call one
handler, encode the answer.

The tenant name and the whole body are validated before anything is read or written, so a
rejected request changes nothing. Errors are raised and leave through shared/web.py's handler.
"""

import dataclasses

from flask import Blueprint, current_app, render_template
from marshmallow import ValidationError

from services.onboarding.schemas import (
    CLAUDE_TOKEN_PREFIX,
    MAX_FORGES,
    OffboardQuery,
    SecretsHeaders,
    SecretsIn,
    SecretsStatus,
    etag,
)
from shared.domain.tenants import normalize_tenant
from shared.service_layer.onboarding import Onboarding
from shared.web import PAGE_CONTENT_SECURITY_POLICY, json_body, present_headers, public, query_args

bp = Blueprint("onboarding", __name__)

# Forge rows on the page; the API takes up to MAX_FORGES.
PAGE_FORGE_ROWS = 3


@dataclasses.dataclass(frozen=True)
class OnboardingService:
    """Everything the views use, built once by create_app."""

    onboarding: Onboarding
    openapi: dict


def _service() -> OnboardingService:
    return current_app.extensions["dark_onboarding"]


@bp.put("/tenants/<tenant:tenant>/secrets")
def put_secrets(tenant: str):
    tenant = normalize_tenant(tenant)
    body = json_body()
    if not isinstance(body, dict):
        raise ValidationError({"_schema": ["the body must be a JSON object"]})
    secrets = SecretsIn().load(body)
    expected_version = SecretsHeaders().load(present_headers("If-Match"))
    version = _service().onboarding.store(tenant, secrets, expected_version=expected_version)
    return _no_content({"ETag": etag(version)})


@bp.get("/tenants/<tenant:tenant>/secrets")
def get_secrets(tenant: str):
    tenant = normalize_tenant(tenant)
    presence = _service().onboarding.status(tenant)
    body = SecretsStatus().dump(
        {
            "tenant": tenant,
            "presence": presence,
            "version": presence.version,
            "updated_at": presence.updated_at,
        }
    )
    return body, 200, {"ETag": etag(presence.version)}


@bp.delete("/tenants/<tenant:tenant>/secrets")
def delete_secrets(tenant: str):
    tenant = normalize_tenant(tenant)
    query = OffboardQuery().load(query_args())
    _service().onboarding.offboard(tenant, force=query["force"])
    return _no_content()


@bp.get("/")
@public
def page():
    html = render_template(
        "index.html",
        forge_rows=range(PAGE_FORGE_ROWS),
        max_forges=MAX_FORGES,
        claude_prefix=CLAUDE_TOKEN_PREFIX,
    )
    return html, 200, {"Content-Security-Policy": PAGE_CONTENT_SECURITY_POLICY}


@bp.get("/health")
@public
def health():
    return {"status": "ok"}


@bp.get("/openapi.json")
@public
def openapi():
    return _service().openapi


def _no_content(headers: dict[str, str] | None = None):
    response = current_app.response_class(status=204, headers=headers)
    # A 204 has no body, so it has no media type either.
    del response.headers["Content-Type"]
    return response
