"""HTTP plumbing shared by the Flask services: one error shape, bearer tokens, strict JSON bodies,
request ids and the request log line, security headers, and the OpenAPI scaffolding.

Each service's app factory wires these in; its views and schemas stay its own.
"""

import hashlib
import hmac
import json
import logging
import re
import time
from collections.abc import Callable, Iterable

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from flask import Flask, current_app, g, jsonify, request
from marshmallow import RAISE, Schema, ValidationError, fields
from werkzeug.exceptions import HTTPException
from werkzeug.routing import RequestRedirect

from shared.domain.errors import DomainError, InvalidTenantName
from shared.logs import new_request_id, request_id_var

# Seconds a client should wait before retrying when a dependency is down: long enough for a
# restart or an unseal to finish, short enough that a retrying client notices recovery.
RETRY_AFTER_SECS = 5
# JSON answers are never rendered, framed or cached; a page sets its own policy before this.
API_CONTENT_SECURITY_POLICY = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'"
# A page runs only its own scripts and styles and talks only to its origin: no inline code, no
# other origin, no framing, and forms post only here.
PAGE_CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)

DomainErrorTable = Iterable[tuple[type[DomainError], int, str]]


# --- the error shape ---------------------------------------------------------------------------


class ApiError(Exception):
    """An answer a service decides on itself (not a domain rule): 401, 415, 503..."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: dict | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details or {}
        self.headers = headers or {}


def error_response(status: int, code: str, message: str, details=None, headers=None):
    response = jsonify({"error": {"code": code, "message": message, "details": details or {}}})
    response.status_code = status
    if status == 503:
        response.headers["Retry-After"] = str(RETRY_AFTER_SECS)
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def install_error_handler(app: Flask, domain_errors: DomainErrorTable, log: logging.Logger):
    """Every failure leaves as `{"error": {"code", "message", "details"}}`.

    `domain_errors` maps domain error classes to (status, code), most specific first. Marshmallow
    validation is a 422 with the field errors in `details.fields`; werkzeug's HTTP errors keep
    their status; anything else is a logged 500 that names the request id and nothing more.
    """
    table = tuple(domain_errors)

    def handle(exc: Exception):
        if isinstance(exc, ApiError):
            return error_response(exc.status, exc.code, exc.message, exc.details, exc.headers)
        if isinstance(exc, ValidationError):
            return error_response(
                422,
                "validation_error",
                "the request is not valid",
                {"fields": field_errors(exc.messages)},
            )
        if isinstance(exc, DomainError):
            for cls, status, code in table:
                if isinstance(exc, cls):
                    details = {key: str(value) for key, value in exc.details.items()}
                    if isinstance(exc, InvalidTenantName):
                        details = {"fields": {"tenant": [exc.message]}}
                    return error_response(status, code, exc.message or code, details)
        if isinstance(exc, RequestRedirect):
            # Werkzeug's redirect to a canonical URL is routing, not a failure.
            return exc.get_response()
        if isinstance(exc, HTTPException):
            # Keep werkzeug's headers (Allow on 405); the body is ours.
            headers = {k: v for k, v in exc.get_headers() if k.lower() != "content-type"}
            code = (exc.name or "error").lower().replace(" ", "_")
            return error_response(exc.code or 500, code, exc.description or exc.name, None, headers)
        log.exception("unhandled error")
        return error_response(
            500,
            "internal_error",
            "internal error; the request id identifies it in the logs",
            {"request_id": g.get("request_id")},
        )

    # One handler for everything: Flask offers HTTPExceptions to an Exception handler too.
    app.register_error_handler(Exception, handle)


def field_errors(messages: object) -> object:
    """Marshmallow's error tree with string keys (list items are keyed by their index)."""
    if isinstance(messages, dict):
        return {str(key): field_errors(value) for key, value in messages.items()}
    return messages


# --- strict input ------------------------------------------------------------------------------

# Unknown field names shown back in an error: short identifiers only. A long or odd "name" may be
# a token pasted into the wrong place, and error bodies never repeat a submitted secret.
_SHOWN_UNKNOWN = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,31}\Z")


class StrictSchema(Schema):
    """Rejects unknown fields, and never repeats an input that might be a secret in its errors."""

    class Meta:
        unknown = RAISE

    def handle_error(self, error: ValidationError, data, *, many: bool, **kwargs) -> None:
        # A fresh error: marshmallow's own keeps the whole input (`.data`), secrets included.
        messages = error.messages
        if isinstance(messages, dict) and not many:
            messages = _hide_odd_unknown_names(messages, self)
        raise ValidationError(messages)


def _hide_odd_unknown_names(messages: dict, schema: Schema) -> dict:
    known = {field.data_key or name for name, field in schema.load_fields.items()}
    shown: dict = {}
    hidden = 0
    for key, value in messages.items():
        if key in known or key == "_schema" or _SHOWN_UNKNOWN.match(str(key)):
            shown[key] = value
        else:
            hidden += 1
    if hidden:
        shown.setdefault("_schema", []).append(f"{hidden} unknown field(s), names not shown")
    return shown


def json_body() -> object:
    """The request's JSON document, parsed strictly.

    415 unless declared application/json; 413 past the app's MAX_CONTENT_LENGTH (werkzeug raises
    it while reading); 400 for anything that is not exactly one JSON document in UTF-8, including
    duplicate keys (which a lenient parser resolves silently, last one wins), NaN and Infinity
    (not JSON), and nesting deep enough to exhaust the decoder. No error repeats the body.
    """
    if not request.is_json:
        raise ApiError(415, "unsupported_media_type", "the body must be application/json")
    raw = request.get_data(cache=False)
    try:
        return json.loads(
            raw.decode("utf-8"), object_pairs_hook=_unique_keys, parse_constant=_not_json
        )
    except (UnicodeDecodeError, ValueError):
        raise ApiError(400, "malformed_json", "the request body is not valid JSON") from None
    except RecursionError:
        raise ApiError(400, "malformed_json", "the request body nests too deeply") from None


def query_args() -> dict[str, str]:
    """The query string as a dict for a schema to load; a key given twice is a 422, not a guess."""
    repeated = [key for key in request.args if len(request.args.getlist(key)) > 1]
    if repeated:
        raise ValidationError({key: ["given more than once"] for key in repeated})
    return request.args.to_dict()


def present_headers(*names: str) -> dict[str, str]:
    """Only the named headers, for a schema to load: never the Authorization header by accident."""
    return {name: request.headers[name] for name in names if name in request.headers}


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    document = dict(pairs)
    if len(document) != len(pairs):
        raise ValueError("duplicate key")
    return document


def _not_json(_constant: str) -> None:
    raise ValueError("NaN and Infinity are not JSON")


# --- bearer tokens -----------------------------------------------------------------------------


def public(view: Callable) -> Callable:
    """Mark a view as reachable without a token (liveness, the OpenAPI document, a page), or as
    deciding access itself."""
    view.public = True
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
        supplied = _bearer(authorization)
        if supplied is None:
            raise ApiError(
                401,
                "unauthorized",
                "a bearer token is required",
                headers={"WWW-Authenticate": self.challenge},
            )
        if not self.valid(supplied):
            raise ApiError(
                401,
                "unauthorized",
                "the bearer token is not valid",
                headers={"WWW-Authenticate": f'{self.challenge}, error="invalid_token"'},
            )


def bearer_token_check(
    tokens: frozenset[str], *, realm: str, open_endpoints: frozenset[str] = frozenset()
) -> Callable[[], None]:
    """A before_request hook that lets a request through only with one of `tokens`.

    Views marked `@public` and the endpoints in `open_endpoints` (e.g. Flask's "static") need no
    token. With no tokens configured every other route answers 401: empty never means open.
    """
    bearer_tokens = BearerTokens(tokens, realm=realm)

    def check() -> None:
        if request.endpoint in open_endpoints or is_public_endpoint():
            return
        bearer_tokens.require(request.headers.get("Authorization", ""))

    return check


def is_public_endpoint() -> bool:
    view = current_app.view_functions.get(request.endpoint)
    return view is not None and getattr(view, "public", False)


def _bearer(header: str) -> str | None:
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token


# --- request ids, the request log line, security headers ---------------------------------------


def install_request_hooks(
    app: Flask,
    log: logging.Logger,
    observe: Callable[[str, str, int, float], None] | None = None,
) -> None:
    """A request id for every request (the caller's X-Request-Id when well-formed), echoed in the
    response, and one log line per request: method, route template, status, duration, request id.
    Never a header, the query, or the body. `observe`, if given, is handed the same method, route,
    status and duration (in seconds) of every request: for metrics.

    Install it before any other before_request hook, so that a 401 is logged with its request id.
    """

    def begin() -> None:
        g.started = time.perf_counter()
        g.request_id = new_request_id(request.headers.get("X-Request-Id"))
        g.request_id_token = request_id_var.set(g.request_id)

    def finish(response):
        response.headers["X-Request-Id"] = g.request_id
        # The route template, not the path: it names no tenant, and keeps metric series few.
        route = request.url_rule.rule if request.url_rule else "-"
        seconds = time.perf_counter() - g.started
        log.info(
            "http method=%s route=%s status=%d duration_ms=%.1f",
            request.method,
            route,
            response.status_code,
            seconds * 1000,
            # Explicit, so that the line keeps its id wherever the record is formatted.
            extra={"request_id": g.request_id},
        )
        if observe is not None:
            observe(request.method, route, response.status_code, seconds)
        return response

    def end(_exc: BaseException | None) -> None:
        token = g.pop("request_id_token", None)
        if token is not None:
            request_id_var.reset(token)

    app.before_request(begin)
    app.after_request(finish)
    app.teardown_request(end)


def install_security_headers(app: Flask) -> None:
    """Headers on every response; a view that sets its own (a page's CSP) keeps them."""

    def secure(response):
        headers = response.headers
        headers.setdefault("Content-Security-Policy", API_CONTENT_SECURITY_POLICY)
        headers.setdefault("X-Content-Type-Options", "nosniff")
        headers.setdefault("Referrer-Policy", "no-referrer")
        headers.setdefault("X-Frame-Options", "DENY")
        # Answers name tenants and their secrets' state: no cache keeps a copy.
        headers.setdefault("Cache-Control", "no-store")
        return response

    app.after_request(secure)


# --- OpenAPI -----------------------------------------------------------------------------------


class ErrorBody(Schema):
    code = fields.String(dump_only=True)
    message = fields.String(dump_only=True)
    details = fields.Dict(dump_only=True)


class ErrorOut(Schema):
    error = fields.Nested(ErrorBody, dump_only=True)


class Health(Schema):
    status = fields.String(dump_only=True)


def new_openapi_spec(title: str, description: str, errors: dict[str, str]) -> APISpec:
    """An OpenAPI 3 spec with bearer security, one `Error<status>` response per entry, and the
    open paths every service serves: /health (liveness) and /openapi.json (the document)."""
    spec = APISpec(
        title=title,
        version="1",
        openapi_version="3.0.3",
        plugins=[MarshmallowPlugin()],
        info={"description": description},
        security=[{"bearer": []}],
    )
    spec.components.security_scheme("bearer", {"type": "http", "scheme": "bearer"})
    for status, text in errors.items():
        response = {"description": text, "content": json_content(ErrorOut)}
        if status == "503":
            response["headers"] = {"Retry-After": {"schema": {"type": "integer"}}}
        if status == "401":
            response["headers"] = {"WWW-Authenticate": {"schema": {"type": "string"}}}
        spec.components.response(f"Error{status}", response)
    spec.path(
        path="/health",
        operations={
            "get": {
                "summary": "Liveness: the process answers",
                "security": [],
                "responses": ok_response("200", Health, "alive"),
            }
        },
    )
    spec.path(
        path="/openapi.json",
        operations={
            "get": {
                "summary": "This document",
                "security": [],
                "responses": {"200": {"description": "OpenAPI 3"}},
            }
        },
    )
    return spec


def json_content(schema: type[Schema]) -> dict:
    # The plugin registers each schema class (and those it nests) as a component and refers to it.
    return {"application/json": {"schema": schema}}


def ok_response(status: str, schema: type[Schema], description: str) -> dict:
    return {status: {"description": description, "content": json_content(schema)}}


def error_refs(*statuses: str) -> dict:
    """References to responses registered by new_openapi_spec."""
    return {status: f"Error{status}" for status in statuses}
