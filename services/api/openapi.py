"""The gateway's OpenAPI document: its title and what each error status means here.

The operations come from the route declarations in views.py (shared/web/openapi.py); a test checks
that every route is in the document. Only /metrics is described here: services/api/metrics.py
adds it to the app outside the blueprint, and it answers text, not a schema.
"""

from shared.web import ApiDocument

DOCUMENT: ApiDocument = {
    "title": "dark-orchestrator gateway",
    "description": "Per-tenant dark-agent VMs: provision, inspect, heal, tear down.",
    "errors": {
        "400": "the body is not valid JSON (or repeats a key, or holds NaN)",
        "401": "no bearer token, or not a valid one",
        "404": "no such instance (also another tenant's)",
        "409": "conflict: the instance's state, or the tenant's instance limit",
        "413": "the body is over 64 KiB",
        "415": "the body is not application/json",
        "422": "validation failed; `details.fields` says which fields and why",
        "429": "too many waits are open; retry after `Retry-After` seconds",
        "503": "a dependency (Postgres, Redis) is down; retry after `Retry-After` seconds",
    },
}

METRICS_OPERATIONS = {
    "get": {
        "summary": "Prometheus metrics: HTTP requests, instances, transitions, reconcile",
        "description": "Text exposition format (OpenMetrics when the Accept header asks "
        "for it). An operator bearer token; only with DARK_METRICS_LOOPBACK_OPEN on (never in "
        "production) may a caller on loopback omit it. The figures from Postgres are at most "
        "15 s old.",
        "responses": {
            "200": {
                "description": "the metrics",
                "content": {"text/plain": {"schema": {"type": "string"}}},
            },
            "401": "Error401",
        },
    }
}
