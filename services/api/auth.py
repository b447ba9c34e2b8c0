"""Operator authentication for the gateway (docs/ARCHITECTURE.md#http-contracts): a bearer token, or
a dashboard session.

API clients send `Authorization: Bearer <token>` with one of DARK_API_TOKENS. The dashboard
(services/api/ui.py) signs in once with such a token; its script then calls the same JSON API with
the session cookie instead. Every route needs one of the two unless its view is marked `@public`.
With no tokens configured every protected route answers 401: an empty DARK_API_TOKENS never means
"open", and nobody can sign in.

The session is Flask's signed cookie: HttpOnly, SameSite=Strict, Secure in production, and valid
for SESSION_LIFETIME from sign-in (it is not re-signed per request, so an open dashboard does not
extend it). It holds no token: only an HMAC of the token under the session key, which names the
token without revealing it (the cookie is signed, not encrypted) and ends the session when that
token is removed from DARK_API_TOKENS; and a CSRF token. A cookie is an ambient credential, so a
state-changing request that relies on the session must repeat the CSRF token in `X-CSRF-Token`;
a browser never sends a bearer token on its own, so a bearer request needs none.

The session key is DARK_SESSION_SECRET, required in production. In development it defaults to an
HMAC of the configured tokens: every gunicorn worker, and the next restart, derives the same key
(a random key per process would sign a user out whenever the other worker answers), and changing
the tokens signs everybody out.
"""

import hashlib
import hmac
import secrets
from datetime import timedelta

from flask import Flask, current_app, request, session
from werkzeug.routing import RequestRedirect

from shared.settings import Settings
from shared.web import ApiError, BearerTokens, is_public_endpoint

# A working day: the dashboard stays open all day, and asks for the token again the next.
SESSION_LIFETIME = timedelta(hours=12)
SESSION_COOKIE = "dark_session"
CSRF_HEADER = "X-CSRF-Token"
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_DEVELOPMENT_KEY_LABEL = b"dark-orchestrator development session key"


class OperatorTokens(BearerTokens):
    """The configured tokens, and the session identifiers they map to."""

    def __init__(self, tokens: frozenset[str], session_key: bytes) -> None:
        super().__init__(tokens, realm="dark-orchestrator")
        self._session_key = session_key
        self._session_ids = [self.session_id(token) for token in tokens]

    def session_id(self, token: str) -> str:
        return hmac.new(self._session_key, token.encode(), hashlib.sha256).hexdigest()

    def valid_session_id(self, supplied: object) -> bool:
        if not isinstance(supplied, str):
            return False
        return any([hmac.compare_digest(supplied, known) for known in self._session_ids])


def session_key(settings: Settings) -> bytes:
    if settings.session_secret:
        return settings.session_secret.encode()
    material = "\n".join(sorted(settings.api_tokens)).encode()
    return hmac.new(_DEVELOPMENT_KEY_LABEL, material, hashlib.sha256).digest()


def install_operator_auth(app: Flask, settings: Settings) -> None:
    """Session cookie settings, and a before_request hook admitting a bearer token or a session.

    Install it after the request-id hook, so that a 401 is logged and answered with the id.
    """
    key = session_key(settings)
    app.secret_key = key
    app.config.update(
        SESSION_COOKIE_NAME=SESSION_COOKIE,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        SESSION_COOKIE_SECURE=settings.production,
        PERMANENT_SESSION_LIFETIME=SESSION_LIFETIME,
        SESSION_REFRESH_EACH_REQUEST=False,
    )
    app.extensions["dark_operator_tokens"] = OperatorTokens(settings.api_tokens, key)
    app.before_request(_check)


def _tokens() -> OperatorTokens:
    return current_app.extensions["dark_operator_tokens"]


def _check() -> None:
    # A redirect to the canonical URL (`/ui` → `/ui/`) reveals nothing; the target is checked.
    if isinstance(request.routing_exception, RequestRedirect) or is_public_endpoint():
        return
    header = request.headers.get("Authorization")
    if header is not None:
        _tokens().require(header)
        return
    if not signed_in():
        raise ApiError(
            401,
            "unauthorized",
            "a bearer token (or a dashboard session) is required",
            headers={"WWW-Authenticate": _tokens().challenge},
        )
    if request.method not in _SAFE_METHODS:
        supplied = request.headers.get(CSRF_HEADER, "")
        if not hmac.compare_digest(supplied.encode(), csrf_token().encode()):
            raise ApiError(
                403,
                "csrf_failed",
                f"a request with the dashboard session must carry its {CSRF_HEADER} header",
            )


def require_bearer() -> None:
    """Admit the request only with a valid operator bearer token, whatever the session: for a
    `@public` view with an access rule of its own (/metrics)."""
    _tokens().require(request.headers.get("Authorization", ""))


# --- the dashboard's session -----------------------------------------------------------------


def sign_in(token: str) -> bool:
    """Start a session for `token` if it is one of the operator tokens; False if it is not."""
    tokens = _tokens()
    if not token or not tokens.valid(token):
        return False
    # A fresh session, so that nothing from before sign-in (a planted cookie) carries over.
    session.clear()
    session.permanent = True
    session["operator"] = tokens.session_id(token)
    session["csrf"] = secrets.token_urlsafe(32)
    return True


def sign_out() -> None:
    session.clear()


def signed_in() -> bool:
    return _tokens().valid_session_id(session.get("operator")) and bool(session.get("csrf"))


def csrf_token() -> str:
    return session.get("csrf", "")
