"""Bearer tokens: the realm's configured tokens, compared in constant time, and the before_request
check that lets a request through only with one of them (or to a view marked `@public`)."""

import hashlib
import hmac
from collections.abc import Callable
from typing import Any, TypeVar

from flask import Flask, current_app, request

from shared.web.errors import ApiError

View = TypeVar("View", bound=Callable[..., Any])

# The attribute `@public` sets on a view function.
_PUBLIC = "public"


def public(view: View) -> View:
    """Mark a view as reachable without a token (liveness, the OpenAPI document, a page), or as
    deciding access itself."""
    setattr(view, _PUBLIC, True)
    return view


class BearerTokens:
    """The tokens configured for one realm, compared in constant time."""

    def __init__(self, tokens: frozenset[str], *, realm: str) -> None:
        self.challenge = f'Bearer realm="{realm}"'
        # Fixed-length digests, so that neither the content nor the length of a configured token
        # shows in the time a comparison takes.
        self._digests = [hashlib.sha256(token.encode()).digest() for token in tokens]

    def valid(self, supplied: str) -> bool:
        digest = hashlib.sha256(supplied.encode()).digest()
        # Compare against every token, without stopping at the first match.
        return any([hmac.compare_digest(digest, known) for known in self._digests])

    def require(self, authorization: str) -> None:
        """Pass only if the Authorization header value carries one of the tokens; else a 401."""
        if not self.valid(self.supplied(authorization)):
            raise self.invalid()

    def supplied(self, authorization: str) -> str:
        """The bearer token an Authorization header value carries; a 401 when it carries none."""
        supplied = _bearer(authorization)
        if supplied is None:
            raise ApiError(
                401,
                "unauthorized",
                "a bearer token is required",
                headers={"WWW-Authenticate": self.challenge},
            )
        return supplied

    def invalid(self) -> ApiError:
        """The 401 for a bearer token that is not valid here."""
        return ApiError(
            401,
            "unauthorized",
            "the bearer token is not valid",
            headers={"WWW-Authenticate": f'{self.challenge}, error="invalid_token"'},
        )


def is_public_endpoint() -> bool:
    """Whether the request's view is marked `@public`."""
    return view_is_public(current_app, request.endpoint)


def view_is_public(app: Flask, endpoint: str | None) -> bool:
    """Whether `endpoint`'s view in `app` is marked `@public`: for a hook that already holds the
    app and the request's endpoint (each `current_app.` and `request.` is a context lookup)."""
    view = app.view_functions.get(endpoint) if endpoint is not None else None
    return view is not None and bool(getattr(view, _PUBLIC, False))


def _bearer(header: str) -> str | None:
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token
