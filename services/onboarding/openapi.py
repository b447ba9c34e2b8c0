"""The onboarding service's OpenAPI document: its title and what each error status means here.

The operations come from the route declarations in views.py (shared/web/openapi.py); a test checks
that every route is in the document.
"""

from shared.web import ApiDocument

DOCUMENT: ApiDocument = {
    "title": "dark-orchestrator onboarding",
    "description": "Where tenants hand over their secrets. Values are write-only: no answer ever "
    "holds one.",
    "errors": {
        "400": "the body is not valid JSON (or repeats a key, or holds NaN)",
        "401": "no bearer token, or not an onboarding token (gateway tokens are refused)",
        "404": "the tenant is not onboarded",
        "409": "the secrets changed concurrently (retry), or the tenant has live instances",
        "412": "If-Match names a version that is no longer current",
        "413": "the body is over 64 KiB",
        "415": "the body is not application/json",
        "422": "validation failed; `details.fields` says which fields and why, never with their "
        "values",
        "503": "Vault (sealed, down) or Postgres is unavailable; retry after `Retry-After` seconds",
    },
}
