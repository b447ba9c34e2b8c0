"""The onboarding service's OpenAPI 3 document, generated from the schemas in schemas.py.

A test checks that every Flask route is listed here.
"""

from services.onboarding import schemas
from shared.web import error_refs, json_content, new_openapi_spec

_ERRORS = {
    "400": "the body is not valid JSON (or repeats a key, or holds NaN)",
    "401": "no bearer token, or not an onboarding token (gateway tokens are refused)",
    "404": "the tenant is not onboarded",
    "409": "the secrets changed concurrently (retry), or the tenant has live instances",
    "412": "If-Match names a version that is no longer current",
    "413": "the body is over 64 KiB",
    "415": "the body is not application/json",
    "422": "validation failed; `details.fields` says which fields and why, never with their values",
    "503": "Vault (sealed, down) or Postgres is unavailable; retry after `Retry-After` seconds",
}

_TENANT = {
    "in": "path",
    "name": "tenant",
    "required": True,
    "schema": {"type": "string"},
    "description": "1 to 63 letters, digits, '-', '_', '.' (NFC), not starting with '.'; "
    "percent-encoded in the path",
}
_ETAG_HEADER = {"ETag": {"description": 'the version, quoted ("3")', "schema": {"type": "string"}}}


def build_openapi() -> dict:
    spec = new_openapi_spec(
        "dark-orchestrator onboarding",
        "Where tenants hand over their secrets. Values are write-only: no answer ever holds one.",
        _ERRORS,
    )
    spec.path(
        path="/tenants/{tenant}/secrets",
        operations={
            "put": {
                "summary": "Store the tenant's secrets (replacing the stored set)",
                "description": "Without If-Match the write is checked against the version read "
                "just before it, so of two racing writers one gets 409 instead of silently "
                "overwriting the other.",
                "parameters": [_TENANT, {"in": "header", "schema": schemas.SecretsHeaders}],
                "requestBody": {"required": True, "content": json_content(schemas.SecretsIn)},
                "responses": {
                    "204": {"description": "stored", "headers": _ETAG_HEADER},
                    **error_refs("400", "401", "409", "412", "413", "415", "422", "503"),
                },
            },
            "get": {
                "summary": "Which secrets are set, their version and when; never a value",
                "parameters": [_TENANT],
                "responses": {
                    "200": {
                        "description": "the status",
                        "content": json_content(schemas.SecretsStatus),
                        "headers": _ETAG_HEADER,
                    },
                    **error_refs("401", "404", "422", "503"),
                },
            },
            "delete": {
                "summary": "Offboard: remove the tenant's secrets (idempotent)",
                "description": "Refused with 409 while the tenant has live instances, unless "
                "force=true.",
                "parameters": [_TENANT, {"in": "query", "schema": schemas.OffboardQuery}],
                "responses": {
                    "204": {"description": "offboarded (or was not onboarded)"},
                    **error_refs("401", "409", "422", "503"),
                },
            },
        },
    )
    spec.path(
        path="/",
        operations={
            "get": {
                "summary": "The onboarding page (HTML); its API calls use the token typed in",
                "security": [],
                "responses": {"200": {"description": "text/html"}},
            }
        },
    )
    return spec.to_dict()
