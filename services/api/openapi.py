"""The gateway's OpenAPI 3 document, generated from the marshmallow schemas in schemas.py.

The operations below say which schema each route reads and answers with; apispec's marshmallow
plugin turns the schemas into JSON Schema. A test checks that every Flask route is listed here.
"""

from services.api import schemas
from shared.web import error_refs, json_content, new_openapi_spec, ok_response

_PATH_PARAMETERS = {
    "tenant": {"type": "string", "description": "tenant name (normalised to NFC)"},
    "instance_id": {"type": "string", "format": "uuid"},
    "task_id": {"type": "string", "format": "uuid"},
}

_ERRORS = {
    "400": "the body is not valid JSON (or repeats a key, or holds NaN)",
    "401": "no bearer token, or not a valid one",
    "404": "no such instance (also another tenant's)",
    "409": "conflict: the instance's state, or the tenant's instance limit",
    "413": "the body is over 64 KiB",
    "415": "the body is not application/json",
    "422": "validation failed; `details.fields` says which fields and why",
    "503": "a dependency (Postgres, Redis) is down; retry after `Retry-After` seconds",
}


def _path(*names: str) -> list[dict]:
    return [
        {"in": "path", "name": name, "required": True, "schema": _PATH_PARAMETERS[name]}
        for name in names
    ]


def build_openapi() -> dict:
    spec = new_openapi_spec(
        "dark-orchestrator gateway",
        "Per-tenant dark-agent VMs: provision, inspect, heal, tear down.",
        _ERRORS,
    )

    instance = _path("tenant", "instance_id")
    spec.path(
        path="/instances",
        operations={
            "post": {
                "summary": "Write a pending instance and enqueue its provisioning",
                "description": (
                    "A 503 leaves no instance behind, so retrying never makes a second VM; "
                    "only when the registry failed as well does it keep the instance, and "
                    "`details.instance_id` names it. A repeat with an `Idempotency-Key` "
                    "whose instance was accepted earlier keeps that instance."
                ),
                "parameters": [{"in": "header", "schema": schemas.ProvisionHeaders}],
                "requestBody": {
                    "required": True,
                    "content": json_content(schemas.ProvisionRequest),
                },
                "responses": {
                    **ok_response(
                        "202", schemas.InstanceAccepted, "accepted; the same key → this again"
                    ),
                    **error_refs("400", "401", "409", "413", "415", "422", "503"),
                },
            },
            "get": {
                "summary": "List instances, newest first",
                "parameters": [{"in": "query", "schema": schemas.ListQuery}],
                "responses": {
                    **ok_response("200", schemas.InstancePage, "a page"),
                    **error_refs("401", "422", "503"),
                },
            },
        },
    )
    spec.path(
        path="/instances/{tenant}/{instance_id}",
        operations={
            "get": {
                "summary": "An instance, its entry points and a live look at its guest",
                "parameters": instance,
                "responses": {
                    **ok_response("200", schemas.InstanceDetail, "the instance"),
                    **error_refs("401", "404", "422", "503"),
                },
            },
            "delete": {
                "summary": "Enqueue the instance's teardown (idempotent)",
                "parameters": [*instance, {"in": "query", "schema": schemas.TeardownQuery}],
                "responses": {
                    **ok_response("202", schemas.InstanceAccepted, "accepted"),
                    **error_refs("401", "404", "409", "422", "503"),
                },
            },
        },
    )
    spec.path(
        path="/reconcile",
        operations={
            "post": {
                "summary": "Run a reconcile now (one at a time; a concurrent one records nothing)",
                "description": "A run over RECONCILE_MAX_DESTRUCTIVE actions judged from an "
                "absence takes none of them and is recorded refused; `confirm_destructive` "
                "approves that many for this one run.",
                "requestBody": {
                    "required": False,
                    "content": json_content(schemas.ReconcileRequest),
                },
                "responses": {
                    **ok_response("202", schemas.ReconcileAccepted, "queued"),
                    **error_refs("400", "401", "415", "422", "503"),
                },
            }
        },
    )
    spec.path(
        path="/reconcile/runs",
        operations={
            "get": {
                "summary": "The latest reconcile runs, newest first, with their actions",
                "parameters": [{"in": "query", "schema": schemas.ReconcileRunsQuery}],
                "responses": {
                    **ok_response("200", schemas.ReconcileRunList, "newest first"),
                    **error_refs("401", "422", "503"),
                },
            }
        },
    )
    spec.path(
        path="/tenants",
        operations={
            "get": {
                "summary": "Tenants, whether each is onboarded, and their live VMs (no secrets)",
                "responses": {
                    **ok_response("200", schemas.TenantList, "by name"),
                    **error_refs("401", "422", "503"),
                },
            }
        },
    )
    spec.path(
        path="/instances/{tenant}/{instance_id}/events",
        operations={
            "get": {
                "summary": "The instance's lifecycle timeline",
                "parameters": instance,
                "responses": {
                    **ok_response("200", schemas.EventList, "oldest first"),
                    **error_refs("401", "404", "422", "503"),
                },
            }
        },
    )
    spec.path(
        path="/instances/{tenant}/{instance_id}/heal",
        operations={
            "post": {
                "summary": "Drive the guest's self-repair and return its report",
                "parameters": instance,
                "requestBody": {"required": False, "content": json_content(schemas.HealRequest)},
                "responses": {
                    **ok_response(
                        "200", schemas.HealReport, "what the guest said, or why it did not"
                    ),
                    **error_refs("400", "401", "404", "409", "415", "422", "503"),
                },
            }
        },
    )
    spec.path(
        path="/tasks/{task_id}",
        operations={
            "get": {
                "summary": "A Celery task's state",
                "parameters": _path("task_id"),
                "responses": {
                    **ok_response("200", schemas.TaskState, "the state"),
                    **error_refs("401", "404", "503"),
                },
            }
        },
    )
    spec.path(
        path="/ready",
        operations={
            "get": {
                "summary": "Readiness: Postgres and Redis answer",
                "security": [],
                "responses": {
                    **ok_response("200", schemas.Readiness, "ready"),
                    **error_refs("503"),
                },
            }
        },
    )
    spec.path(
        path="/metrics",
        operations={
            "get": {
                "summary": "Prometheus metrics: HTTP requests, instances, transitions, reconcile",
                "description": "Text exposition format (OpenMetrics when the Accept header asks "
                "for it). No token is needed from loopback while DARK_METRICS_LOOPBACK_OPEN is "
                "on; from anywhere else, an operator bearer token.",
                "responses": {
                    "200": {
                        "description": "the metrics",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    **error_refs("401"),
                },
            }
        },
    )
    return spec.to_dict()
