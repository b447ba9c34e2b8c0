"""Bearer-token authentication for the gateway (DESIGN §6).

Every route needs `Authorization: Bearer <token>` unless its view is marked `@public`. With no
tokens configured every protected route answers 401: an empty DARK_API_TOKENS never means "open".
"""

import hashlib
import hmac
from collections.abc import Callable

from flask import current_app, request

from services.api.errors import ApiError

_CHALLENGE = 'Bearer realm="dark-orchestrator"'


def public(view: Callable) -> Callable:
    """Mark a view as reachable without a token (liveness, readiness, the OpenAPI document)."""
    view.public = True
    return view


def bearer_token_check(tokens: frozenset[str]) -> Callable[[], None]:
    """A before_request hook that lets a request through only with one of `tokens`."""
    # Compare fixed-length digests so that neither the content nor the length of a configured
    # token shows in the time a comparison takes.
    digests = [hashlib.sha256(token.encode()).digest() for token in tokens]

    def check() -> None:
        view = current_app.view_functions.get(request.endpoint)
        if view is not None and getattr(view, "public", False):
            return
        supplied = _bearer(request.headers.get("Authorization", ""))
        if supplied is None:
            raise ApiError(
                401,
                "unauthorized",
                "a bearer token is required",
                headers={"WWW-Authenticate": _CHALLENGE},
            )
        supplied_digest = hashlib.sha256(supplied.encode()).digest()
        # Compare against every token, without stopping at the first match.
        matches = [hmac.compare_digest(supplied_digest, digest) for digest in digests]
        if not any(matches):
            raise ApiError(
                401,
                "unauthorized",
                "the bearer token is not valid",
                headers={"WWW-Authenticate": f'{_CHALLENGE}, error="invalid_token"'},
            )

    return check


def _bearer(header: str) -> str | None:
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token
