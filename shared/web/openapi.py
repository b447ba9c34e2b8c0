"""The OpenAPI document, generated from the route declarations (flask-smorest).

Each route says what it reads and answers with its decorators: `@blp.arguments(Schema,
location=...)` for a body, query or headers (parsed by shared/web/parsing.py's StrictParser, so
the declared schema is the enforced one), `@blp.response(status, Schema)` for the answer it
encodes, `@error_responses(blp, ...)` for the error statuses it can answer, and its docstring for
the summary (first line) and description (the rest). `new_api` builds the document from those
when the blueprint is registered; nothing lists the operations a second time.
"""

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypedDict

import flask_smorest
from flask import Flask
from marshmallow import Schema, fields

from shared.domain.tenants import MAX_TENANT_LENGTH
from shared.web.auth import public
from shared.web.parsing import StrictParser

# What flask-smorest's decorators do to a view: register or document it, or wrap it in one that
# takes the parsed arguments (so not always the same signature).
ViewDecorator = Callable[[Callable[..., Any]], Callable[..., Any]]

OPENAPI_VERSION = "3.0.3"

# A tenant name as the spec states it: 1 to MAX_TENANT_LENGTH characters, no '.' first, and of
# ASCII only letters, digits, '-', '_' and '.'. Every character outside ASCII passes the pattern:
# which of those are letters, digits and marks (Unicode categories, after NFC) is not expressible
# in a regex every OpenAPI tool understands (`\p{L}` needs ECMA's `u` flag, and Python's `re` has
# no `\p`), so the server decides those. The pattern therefore never refuses a valid name, and
# refuses every ASCII-only invalid one. Written with \x escapes only: the same in ECMA and Python.
_ASCII_NOT_IN_A_NAME = r"\x00-\x2c\x2f\x3a-\x40\x5b-\x5e\x60\x7b-\x7f"
TENANT_PATTERN = rf"^[^{_ASCII_NOT_IN_A_NAME}\x2e][^{_ASCII_NOT_IN_A_NAME}]*$"
TENANT_RULE = (
    f"1 to {MAX_TENANT_LENGTH} letters, digits, '-', '_', '.' (after NFC), not starting with '.'"
)
# The JSON Schema keywords of a tenant name, for path parameters and for fields (as metadata).
TENANT_CONSTRAINTS = {
    "minLength": 1,
    "maxLength": MAX_TENANT_LENGTH,
    "pattern": TENANT_PATTERN,
}


def tenant_parameter(description: str = TENANT_RULE) -> dict[str, object]:
    """The `{tenant}` path parameter, for `blp.route(..., parameters=[tenant_parameter()])`."""
    return {
        "in": "path",
        "name": "tenant",
        "required": True,
        "description": description,
        "schema": {"type": "string", **TENANT_CONSTRAINTS},
    }


# --- the error shape, as documented -------------------------------------------------------------


class ErrorBody(Schema):
    code = fields.String(dump_only=True)
    message = fields.String(dump_only=True)
    details = fields.Dict(dump_only=True)


class ErrorOut(Schema):
    error = fields.Nested(ErrorBody, dump_only=True)


class Health(Schema):
    status = fields.String(dump_only=True)


# --- flask-smorest, strict ----------------------------------------------------------------------


# flask-smorest ships no type information: its classes are Any to the type checker.
class ApiBlueprint(flask_smorest.Blueprint):  # type: ignore[misc]
    """A flask-smorest Blueprint whose `arguments` parse with StrictParser.

    `location="json_or_empty"` is a JSON body that may be left out (documented as an optional
    request body).
    """

    ARGUMENTS_PARSER = StrictParser()
    DEFAULT_LOCATION_CONTENT_TYPE_MAPPING = {
        **flask_smorest.Blueprint.DEFAULT_LOCATION_CONTENT_TYPE_MAPPING,
        "json_or_empty": "application/json",
    }

    if TYPE_CHECKING:
        # The decorators this project uses, as the type checker should see them (flask-smorest's
        # own are untyped). Declarations only: the methods are smorest's.
        def route(
            self, rule: str, *, parameters: list[dict[str, object]] | None = None, **options: Any
        ) -> ViewDecorator: ...

        def arguments(self, schema: type[Schema], **kwargs: Any) -> ViewDecorator: ...

        def response(
            self, status_code: int, schema: type[Schema] | None = None, **kwargs: Any
        ) -> ViewDecorator: ...

        def alt_response(
            self, status_code: int, response: str | None = None, **kwargs: Any
        ) -> ViewDecorator: ...

        @staticmethod
        def doc(**kwargs: Any) -> ViewDecorator: ...


class OpenApi(flask_smorest.Api):  # type: ignore[misc]  # untyped, as above
    """flask-smorest's Api for its document only.

    - No error handler of its own: shared/web/errors.py's handler answers every error in the one
      shape (smorest's would answer HTTP errors in another).
    - No implicit `default` response on every operation; the error responses are the ones a
      route lists (`error_responses`), each a reference to `Error<status>`.
    - No documentation pages: the document is served by each service's `/openapi.json` route.
    """

    DEFAULT_ERROR_RESPONSE_NAME = None
    # The responses smorest references on its own (422 for every `arguments`) have our shape.
    ERROR_SCHEMA = ErrorOut

    def _register_error_handlers(self) -> None:
        pass

    def _register_pagination_header(self) -> None:
        # No route pages with smorest's pagination: no PaginationMetadata in the document.
        pass

    @functools.cached_property
    def document(self) -> dict[str, Any]:
        """The whole document; built once, after every blueprint has been registered."""
        document: dict[str, Any] = self.spec.to_dict()
        return document


class ApiDocument(TypedDict):
    """A service's part of its document, for `new_api(app, **document)`."""

    title: str
    description: str
    errors: dict[str, str]  # status → what it means for this service


def new_api(app: Flask, *, title: str, description: str, errors: dict[str, str]) -> OpenApi:
    """An OpenAPI 3 document for `app` with bearer security and one `Error<status>` response per
    entry of `errors` (status → what it means for this service). Register the service's
    blueprint with `api.register_blueprint(bp)` to add its operations."""
    api = OpenApi(
        app,
        spec_kwargs={
            "title": title,
            "version": "1",
            "openapi_version": OPENAPI_VERSION,
            "info": {"description": description},
            "security": [{"bearer": []}],
        },
    )
    api.spec.components.security_scheme("bearer", {"type": "http", "scheme": "bearer"})
    for status, text in errors.items():
        response: dict[str, object] = {"description": text, "content": json_content(ErrorOut)}
        if status in ("429", "503"):
            response["headers"] = {"Retry-After": {"schema": {"type": "integer"}}}
        if status == "401":
            response["headers"] = {"WWW-Authenticate": {"schema": {"type": "string"}}}
        api.spec.components.response(f"Error{status}", response)
    return api


def json_content(schema: type[Schema]) -> dict[str, dict[str, type[Schema]]]:
    # The plugin registers each schema class (and those it nests) as a component and refers to it.
    return {"application/json": {"schema": schema}}


def error_responses(blp: ApiBlueprint, *statuses: int) -> ViewDecorator:
    """Document that a route can answer these error statuses (references to `Error<status>`).

    Documentation only: the route runs `view` itself. flask-smorest's `alt_response` documents a
    status by wrapping the view in a function that only calls it (through the app proxy, once
    per request and status); the document it builds is kept and the wrappers are dropped.
    """

    def decorate(view: Callable[..., Any]) -> Callable[..., Any]:
        documented = view
        for status in statuses:
            documented = blp.alt_response(status, f"Error{status}")(documented)
        # Each wrapper holds a copy of what it wraps had, plus its own status.
        view._apidoc = documented._apidoc  # type: ignore[attr-defined]
        return view

    return decorate


def add_open_routes(blp: ApiBlueprint) -> None:
    """The open routes every service serves: /health (liveness) and /openapi.json (the document)."""

    @blp.route("/health")
    @public
    @blp.doc(security=[])
    @blp.response(200, Health, description="alive")
    def health() -> dict[str, str]:
        """Liveness: the process answers"""
        return {"status": "ok"}

    @blp.route("/openapi.json")
    @public
    @blp.doc(security=[])
    @blp.response(200, description="OpenAPI 3")
    def openapi() -> dict[str, Any]:
        """This document"""
        document: dict[str, Any] = flask_smorest.current_api.document
        return document
