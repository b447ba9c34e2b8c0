"""The one error shape every Flask service answers with: {"error": {"code", "message", "details"}}.

A service raises `ApiError` for an answer it decides on itself, a domain error for a broken rule,
or a marshmallow `ValidationError` for a bad request; `install_error_handler` turns each into the
shape, with the status its table (or the error) says.
"""

import logging
from collections.abc import Iterable, Mapping

from flask import Flask, Response, g, jsonify
from marshmallow import ValidationError
from werkzeug.exceptions import HTTPException
from werkzeug.routing import RequestRedirect
from werkzeug.wrappers import Response as WerkzeugResponse

from shared.domain.errors import DomainError, InvalidTenantName

# Seconds a client should wait before retrying when a dependency is down: long enough for a
# restart or an unseal to finish, short enough that a retrying client notices recovery.
RETRY_AFTER_SECS = 5

DomainErrorTable = Iterable[tuple[type[DomainError], int, str]]


class ApiError(Exception):
    """An answer a service decides on itself (not a domain rule): 401, 415, 503..."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: Mapping[str, object] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details or {}
        self.headers = headers or {}


def error_response(
    status: int,
    code: str,
    message: str,
    details: Mapping[str, object] | None = None,
    headers: Mapping[str, str] | None = None,
) -> Response:
    response = jsonify({"error": {"code": code, "message": message, "details": details or {}}})
    response.status_code = status
    if status == 503:
        response.headers["Retry-After"] = str(RETRY_AFTER_SECS)
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def install_error_handler(app: Flask, domain_errors: DomainErrorTable, log: logging.Logger) -> None:
    """Every failure leaves as `{"error": {"code", "message", "details"}}`.

    `domain_errors` maps domain error classes to (status, code), most specific first. Marshmallow
    validation is a 422 with the field errors in `details.fields`; werkzeug's HTTP errors keep
    their status; anything else is a logged 500 that names the request id and nothing more.
    """
    table = tuple(domain_errors)

    def handle(exc: Exception) -> WerkzeugResponse:
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
                    details: dict[str, object] = {
                        key: str(value) for key, value in exc.details.items()
                    }
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
