"""HTTP plumbing shared by the Flask services, one module per concern:

- errors.py: the one error shape, and the handler that answers every failure in it;
- parsing.py: strict input (one JSON document, no unknown fields, no repeated query keys) and the
  webargs parser that applies it to the routes' declared schemas;
- auth.py: bearer tokens and the `@public` mark;
- flask_app.py: the Flask class the apps are built from (Flask, with one per-request check cached);
- hooks.py: request ids, the request log line, security headers;
- openapi.py: flask-smorest wiring, so that each route's declaration is its documentation;
- docs.py: /docs, that document in Swagger UI.

Each service's app factory wires these in; its views and schemas stay its own. The names below
are re-exported for `from shared.web import ...`.
"""

from shared.web.auth import BearerTokens, is_public_endpoint, public, view_is_public
from shared.web.docs import install_docs
from shared.web.errors import (
    RETRY_AFTER_SECS,
    ApiError,
    DomainErrorTable,
    error_response,
    field_errors,
    install_error_handler,
)
from shared.web.flask_app import App
from shared.web.hooks import (
    API_CONTENT_SECURITY_POLICY,
    PAGE_CONTENT_SECURITY_POLICY,
    install_request_hooks,
    install_security_headers,
)
from shared.web.openapi import (
    TENANT_CONSTRAINTS,
    TENANT_PATTERN,
    TENANT_RULE,
    ApiBlueprint,
    ApiDocument,
    OpenApi,
    add_open_routes,
    error_responses,
    new_api,
    tenant_parameter,
)
from shared.web.parsing import StrictParser, StrictSchema, json_body, present_headers, query_args

__all__ = [
    "API_CONTENT_SECURITY_POLICY",
    "PAGE_CONTENT_SECURITY_POLICY",
    "RETRY_AFTER_SECS",
    "TENANT_CONSTRAINTS",
    "TENANT_PATTERN",
    "TENANT_RULE",
    "ApiBlueprint",
    "ApiDocument",
    "ApiError",
    "App",
    "BearerTokens",
    "DomainErrorTable",
    "OpenApi",
    "StrictParser",
    "StrictSchema",
    "add_open_routes",
    "error_response",
    "error_responses",
    "field_errors",
    "install_docs",
    "install_error_handler",
    "install_request_hooks",
    "install_security_headers",
    "is_public_endpoint",
    "json_body",
    "new_api",
    "present_headers",
    "public",
    "query_args",
    "tenant_parameter",
    "view_is_public",
]
