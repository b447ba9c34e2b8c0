"""Operator authentication for the gateway (docs/ARCHITECTURE.md#http-contracts): a bearer token, or
a dashboard session.

API clients send `Authorization: Bearer <token>` with one of DARK_API_TOKENS. The dashboard
(services/api/ui.py) signs in once with such a token; its script then calls the same JSON API with
the session cookie instead. Every route needs one of the two unless its view is marked `@public`.
With no tokens configured every protected route answers 401: an empty DARK_API_TOKENS never means
"open", and nobody can sign in.

The session is server-side (docs/ARCHITECTURE.md#dashboard-sessions): a row in Postgres
(shared/adapters/sessions.py) named by a random id that Flask's signed cookie carries (HttpOnly,
SameSite=Strict, Secure in production), with a CSRF token. The row holds an HMAC of the operator
token under the session key, which names the token without revealing it, and expires
SESSION_LIFETIME after sign-in (an open dashboard does not extend it). A session is valid only while
its row exists and its token is still in DARK_API_TOKENS: signing out deletes the row, so a stolen
copy of the cookie stops working at once, and removing a token ends the sessions signed in with it.
A cookie is an ambient credential, so a state-changing request that relies on the session must
repeat the CSRF token in `X-CSRF-Token`; a browser never sends a bearer token on its own, so a
bearer request needs none. In production every answer carries Strict-Transport-Security.

The session key is DARK_SESSION_SECRET, required in production. In development it defaults to an
HMAC of the configured tokens: every gunicorn worker, and the next restart, derives the same key
(a random key per process would sign a user out whenever the other worker answers), and changing
the tokens signs everybody out.
"""

import hashlib
import hmac
import secrets
from datetime import timedelta

from flask import Flask, Request, Response, current_app, g, request, session
from flask.sessions import SecureCookieSession, SecureCookieSessionInterface
from itsdangerous import URLSafeTimedSerializer
from werkzeug.routing import RequestRedirect

from shared.adapters.sessions import PostgresOperatorSessions
from shared.settings import Settings
from shared.web import ApiError, BearerTokens, view_is_public

# A working day: the dashboard stays open all day, and asks for the token again the next.
SESSION_LIFETIME = timedelta(hours=12)
SESSION_COOKIE = "dark_session"
CSRF_HEADER = "X-CSRF-Token"
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_DEVELOPMENT_KEY_LABEL = b"dark-orchestrator development session key"
# A year: browsers reach the gateway over HTTPS only, once they have seen it there.
HSTS = "max-age=31536000"


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


def install_operator_auth(
    app: Flask, settings: Settings, sessions: PostgresOperatorSessions
) -> None:
    """Session cookie settings, and a before_request hook admitting a bearer token or a session;
    in production, HSTS on every answer.

    Install it after the request-id hook, so that a 401 is logged and answered with the id.
    """
    key = session_key(settings)
    app.secret_key = key
    app.session_interface = CachedSerializerSessionInterface()
    app.config.update(
        SESSION_COOKIE_NAME=SESSION_COOKIE,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        SESSION_COOKIE_SECURE=settings.production,
        PERMANENT_SESSION_LIFETIME=SESSION_LIFETIME,
        SESSION_REFRESH_EACH_REQUEST=False,
    )
    app.extensions["dark_operator_tokens"] = OperatorTokens(settings.api_tokens, key)
    app.extensions["dark_operator_sessions"] = sessions
    app.before_request(_check)
    if settings.production:
        app.after_request(_strict_transport_security)


class CachedSerializerSessionInterface(SecureCookieSessionInterface):
    """Flask's signed-cookie sessions, with the signing serializer built once per key set instead
    of on every request (Flask opens the session of each request, a bearer one included, and
    building the serializer was a measurable part of a short request). Same keys, same salt, same
    cookies."""

    def __init__(self) -> None:
        self._cached: tuple[object, URLSafeTimedSerializer | None] | None = None

    def get_signing_serializer(self, app: Flask) -> URLSafeTimedSerializer | None:
        keys = (app.secret_key, tuple(app.config["SECRET_KEY_FALLBACKS"] or ()))
        cached = self._cached
        if cached is None or cached[0] != keys:
            cached = (keys, super().get_signing_serializer(app))
            self._cached = cached
        return cached[1]

    def open_session(self, app: Flask, request: Request) -> SecureCookieSession | None:
        # A request with no Cookie header at all (every API client's) has no session cookie:
        # Flask's own answer for that, a new empty session, without parsing the absent cookies.
        if "HTTP_COOKIE" not in request.environ and self.get_signing_serializer(app) is not None:
            return self.session_class()
        return super().open_session(app, request)


def _strict_transport_security(response: Response) -> Response:
    response.headers.setdefault("Strict-Transport-Security", HSTS)
    return response


def _tokens(app: Flask = current_app) -> OperatorTokens:
    tokens: OperatorTokens = app.extensions["dark_operator_tokens"]
    return tokens


def _sessions() -> PostgresOperatorSessions:
    sessions: PostgresOperatorSessions = current_app.extensions["dark_operator_sessions"]
    return sessions


def _check() -> None:
    # Each `request.` and `current_app.` is a context lookup: the objects are fetched once.
    current = request._get_current_object()  # type: ignore[attr-defined]
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    # A redirect to the canonical URL (`/ui` → `/ui/`) reveals nothing; the target is checked.
    if isinstance(current.routing_exception, RequestRedirect) or view_is_public(
        app, current.endpoint
    ):
        return
    header = current.headers.get("Authorization")
    if header is not None:
        _tokens(app).require(header)
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
    _end_session()
    session.permanent = True
    session["sid"] = _sessions().start(tokens.session_id(token), SESSION_LIFETIME)
    session["csrf"] = secrets.token_urlsafe(32)
    g.signed_in = True
    return True


def sign_out() -> None:
    """End the session on the server, so that no copy of the cookie works any more."""
    _end_session()
    g.signed_in = False


def _end_session() -> None:
    session_id = session.get("sid")
    if isinstance(session_id, str):
        _sessions().end(session_id)
    session.clear()


def signed_in() -> bool:
    """Whether the request carries a live session whose token is still configured (looked up
    once per request)."""
    if "signed_in" not in g:
        g.signed_in = _live_session()
    return bool(g.signed_in)


def _live_session() -> bool:
    session_id = session.get("sid")
    if not isinstance(session_id, str) or not session.get("csrf"):
        return False
    digest = _sessions().token_digest(session_id)
    if digest is None:
        return False
    if not _tokens().valid_session_id(digest):
        # Its token was removed: the session ends for good, even if the token came back.
        _sessions().end(session_id)
        return False
    return True


def csrf_token() -> str:
    return session.get("csrf", "")
