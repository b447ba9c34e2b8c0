"""The onboarding routes (docs/ARCHITECTURE.md#http-contracts): decode the request, call one
handler, encode the answer.

The tenant name and the whole body are validated before anything is read or written, so a
rejected request changes nothing. Each route's decorators declare what it reads and answers with,
which is also its OpenAPI operation. Errors are raised and leave through shared/web/errors.py's
handler.
"""

import functools
from collections.abc import Callable

from flask import current_app, render_template
from werkzeug.exceptions import NotFound

from services.onboarding.auth import caller, record_invite_use
from services.onboarding.schemas import (
    CLAUDE_TOKEN_PREFIX,
    MAX_FORGES,
    OffboardQuery,
    SecretsHeaders,
    SecretsIn,
    SecretsStatus,
    Whoami,
    etag,
)
from shared.bootstrap import OnboardingServices
from shared.domain.errors import SecretsMissing
from shared.domain.secrets import TenantSecrets
from shared.domain.tenants import TenantName
from shared.web import (
    PAGE_CONTENT_SECURITY_POLICY,
    TENANT_RULE,
    ApiBlueprint,
    add_open_routes,
    error_responses,
    public,
    tenant_parameter,
)

bp = ApiBlueprint("onboarding", __name__)

# Forge rows on the page; the API takes up to MAX_FORGES.
PAGE_FORGE_ROWS = 3


def _service() -> OnboardingServices:
    """Everything the views use: shared.bootstrap.build_onboarding's container."""
    service: OnboardingServices = current_app.extensions["dark_onboarding"]
    return service


_TENANT = [tenant_parameter(f"{TENANT_RULE}; percent-encoded in the path")]
_ETAG = {"ETag": {"description": 'the version, quoted ("3")', "schema": {"type": "string"}}}


def _tenant_first(view: Callable) -> Callable:
    """Check the path's tenant name, and that the caller may act on it, before anything else (its
    body, its headers) is read.

    A tenant token on another tenant's path gets exactly the answer an admin gets for a tenant
    that does not exist (404 not_onboarded): whether that tenant exists stays unsaid.
    """

    @functools.wraps(view)
    def check(*args: object, tenant: str, **kwargs: object) -> object:
        name = TenantName(tenant)
        who = caller()
        if not who.admin and who.tenant != name:
            raise SecretsMissing("tenant not onboarded", tenant=name)
        return view(*args, tenant=name, **kwargs)

    return check


def _admin_only(view: Callable) -> Callable:
    """For a tenant token the route does not exist (404, as for any unknown path): offboarding
    is the operator's."""

    @functools.wraps(view)
    def check(*args: object, **kwargs: object) -> object:
        if not caller().admin:
            raise NotFound()
        return view(*args, **kwargs)

    return check


@bp.route("/tenants/<tenant:tenant>/secrets", methods=["PUT"], parameters=_TENANT)
@_tenant_first
@bp.arguments(SecretsIn)
@bp.arguments(SecretsHeaders, location="headers")
@bp.response(204, description="stored", headers=_ETAG)
@error_responses(bp, 400, 401, 409, 412, 413, 415, 422, 503)
def put_secrets(secrets: TenantSecrets, expected_version: int | None, tenant: TenantName):
    """Store the tenant's secrets (replacing the stored set)

    Without If-Match the write is checked against the version read just before it, so of two
    racing writers one gets 409 instead of silently overwriting the other.
    """
    service, token = _service(), caller().invite_token
    version = service.onboarding.store(
        tenant,
        secrets,
        expected_version=expected_version,
        # A tenant's write lands only while its invite is current (offboarding revokes it).
        still_allowed=None if token is None else lambda: service.invites.tenant_of(token) == tenant,
    )
    record_invite_use()
    return _no_content({"ETag": etag(version)})


@bp.route("/tenants/<tenant:tenant>/secrets", methods=["GET"], parameters=_TENANT)
@_tenant_first
@bp.response(200, SecretsStatus, description="the status", headers=_ETAG)
@error_responses(bp, 401, 404, 422, 503)
def get_secrets(tenant: TenantName):
    """Which secrets are set, their version and when; never a value"""
    presence = _service().onboarding.status(tenant)
    body = {
        "tenant": tenant,
        "presence": presence,
        "version": presence.version,
        "updated_at": presence.updated_at,
    }
    return body, 200, {"ETag": etag(presence.version)}


@bp.route("/tenants/<tenant:tenant>/secrets", methods=["DELETE"], parameters=_TENANT)
@_tenant_first
@_admin_only
@bp.arguments(OffboardQuery, location="query")
@bp.response(204, description="offboarded (or was not onboarded)")
@error_responses(bp, 401, 404, 409, 422, 503)
def delete_secrets(query: dict, tenant: TenantName):
    """Offboard: remove the tenant's secrets (idempotent); admin tokens only

    Refused with 409 while the tenant has live instances, unless force=true. Revokes the tenant's
    invite. A tenant token gets 404, as if the route did not exist.
    """
    service = _service()
    # First: a name reused later starts a new identity, so the old invite must not write secrets
    # again, not even from a request already past its token check (Onboarding re-checks it).
    service.invites.revoke(tenant)
    service.onboarding.offboard(tenant, force=query["force"])
    return _no_content()


@bp.route("/whoami")
@bp.response(200, Whoami, description="the caller")
@error_responses(bp, 401, 503)
def whoami():
    """Who the bearer token is: a tenant's invite (and which tenant) or an admin token"""
    who = caller()
    return {"role": "admin" if who.admin else "tenant", "tenant": who.tenant}


@bp.route("/")
@public
@bp.doc(security=[], responses={"200": {"description": "text/html"}})
def page():
    """The onboarding page (HTML); its API calls use the invite in the URL's fragment (#token=…)
    or the token typed in"""
    html = render_template(
        "index.html",
        forge_rows=range(PAGE_FORGE_ROWS),
        max_forges=MAX_FORGES,
        claude_prefix=CLAUDE_TOKEN_PREFIX,
    )
    return html, 200, {"Content-Security-Policy": PAGE_CONTENT_SECURITY_POLICY}


add_open_routes(bp)


def _no_content(headers: dict[str, str] | None = None):
    response = current_app.response_class(status=204, headers=headers)
    # A 204 has no body, so it has no media type either.
    del response.headers["Content-Type"]
    return response
