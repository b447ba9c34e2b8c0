"""The gateway's one error shape and the one handler that maps errors to it (STYLE.md 7).

Every failure leaves as `{"error": {"code", "message", "details"}}`: domain errors by the table
below, marshmallow validation as 422, werkzeug's HTTP errors (404 route, 405, 413, 415...) with
their own status, and anything unexpected as a logged 500 that names the request id and nothing
else.
"""

import logging

from flask import Flask, g, jsonify
from marshmallow import ValidationError
from werkzeug.exceptions import HTTPException

from shared.domain.errors import (
    DispatchUnavailable,
    DomainError,
    IllegalTransition,
    InstanceNotFound,
    InvalidCursor,
    InvalidTenantName,
    QuotaExceeded,
    RegistryUnavailable,
    TenantNotOnboarded,
    TransitionConflict,
)

log = logging.getLogger("dark.api")

# Seconds a client should wait before retrying when a dependency is down: long enough for a
# Postgres or Redis restart to finish, short enough that a retrying client notices recovery.
RETRY_AFTER_SECS = 5

# Most specific class first: the first match wins.
DOMAIN_ERRORS: tuple[tuple[type[DomainError], int, str], ...] = (
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


class ApiError(Exception):
    """An error the gateway itself decides on (not a domain rule): 401, 409 not ready, 503..."""

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


def handle_error(exc: Exception):
    if isinstance(exc, ApiError):
        return error_response(exc.status, exc.code, exc.message, exc.details, exc.headers)
    if isinstance(exc, ValidationError):
        return error_response(
            422, "validation_error", "the request is not valid", {"fields": exc.messages}
        )
    if isinstance(exc, DomainError):
        for cls, status, code in DOMAIN_ERRORS:
            if isinstance(exc, cls):
                details = {key: _json_value(value) for key, value in exc.details.items()}
                if cls is InvalidTenantName:
                    details = {"fields": {"tenant": [exc.message]}}
                return error_response(status, code, exc.message or code, details)
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


def _json_value(value: object) -> object:
    return value if isinstance(value, str | int | float | bool) or value is None else str(value)


def install_error_handler(app: Flask) -> None:
    # One handler for everything: Flask offers HTTPExceptions to an Exception handler too (all but
    # routing redirects such as `//instances` → `/instances`, which it answers itself).
    app.register_error_handler(Exception, handle_error)
