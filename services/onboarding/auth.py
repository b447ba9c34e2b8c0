"""Who calls the onboarding service (docs/ARCHITECTURE.md#invites): an admin or one tenant.

- An **admin token** (DARK_ONBOARDING_TOKENS, the operator's automation) may act on any tenant,
  and alone may offboard. It is compared in constant time against every configured token.
- A **tenant token** is a live invite: it acts as its own tenant only. It is found by its SHA-256
  digest (an index probe): the time that takes says nothing about the token, since nobody can
  work back from a digest. An expired or revoked invite is no token at all (401).

Anything else is a 401, a gateway token included (its realm is the gateway's). The token is
never logged; only the caller's kind and tenant reach `g.caller`.
"""

import dataclasses
import logging

from flask import Flask, current_app, g, request

from shared.domain.errors import RegistryUnavailable
from shared.service_layer.invites import Invites
from shared.web import BearerTokens, is_public_endpoint

log = logging.getLogger("dark.onboarding")


@dataclasses.dataclass(frozen=True)
class Caller:
    # None for an admin; the invite's tenant for a tenant token.
    tenant: str | None
    # The invite token, kept for this request only, to record the invite's first use.
    invite_token: str | None = dataclasses.field(default=None, repr=False)

    @property
    def admin(self) -> bool:
        return self.tenant is None


def install_onboarding_auth(app: Flask, admin_tokens: frozenset[str], invites: Invites) -> None:
    """A before_request hook that sets `g.caller`, or answers 401 (503 when the invite registry
    cannot be read). `@public` views and static files need no token.

    Install it after the request-id hook, so that a 401 is logged and answered with the id.
    """
    tokens = BearerTokens(admin_tokens, realm="dark-onboarding")

    def check() -> None:
        if request.endpoint == "static" or is_public_endpoint():
            return
        supplied = tokens.supplied(request.headers.get("Authorization", ""))
        if tokens.valid(supplied):
            g.caller = Caller(tenant=None)
            return
        tenant = invites.tenant_of(supplied)
        if tenant is None:
            raise tokens.invalid()
        g.caller = Caller(tenant=tenant, invite_token=supplied)

    app.extensions["dark_onboarding_invites"] = invites
    app.before_request(check)


def caller() -> Caller:
    return g.caller


def record_invite_use() -> None:
    """The caller stored secrets: with an invite, mark it used (it keeps working until it
    expires, so the tenant can correct what it sent)."""
    who = caller()
    if who.invite_token is None:
        return
    try:
        current_app.extensions["dark_onboarding_invites"].record_use(who.invite_token)
    except RegistryUnavailable:
        # The secrets are stored; the dashboard only shows the invite as pending a while longer.
        log.warning("could not mark the invite used", extra={"tenant": who.tenant})
