"""The gateway's OpenAPI 3 document, generated from the marshmallow schemas in schemas.py.

The operations below say which schema each route reads and answers with; apispec's marshmallow
plugin turns the schemas into JSON Schema. A test checks that every Flask route is listed here.
"""

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin

from services.api import schemas

_PATH_PARAMETERS = {
    "tenant": {"type": "string", "description": "tenant name (normalised to NFC)"},
    "instance_id": {"type": "string", "format": "uuid"},
    "task_id": {"type": "string", "format": "uuid"},
}

_ERRORS = {
    "400": "the body is not valid JSON",
    "401": "no bearer token, or not a valid one",
    "404": "no such instance (also another tenant's)",
    "409": "conflict: the instance's state, or the tenant's instance limit",
    "413": "the body is over 64 KiB",
    "415": "the body is not application/json",
    "422": "validation failed; `details.fields` says which fields and why",
    "503": "a dependency (Postgres, Redis) is down; retry after `Retry-After` seconds",
}


def _ok(status: str, schema: type, description: str) -> dict:
    return {status: {"description": description, "content": _json(schema)}}


def _json(schema: type) -> dict:
    # The plugin registers each schema class (and those it nests) as a component and refers to it.
    return {"application/json": {"schema": schema}}


def _errors(*statuses: str) -> dict:
    return {status: f"Error{status}" for status in statuses}


def _path(*names: str) -> list[dict]:
    return [
        {"in": "path", "name": name, "required": True, "schema": _PATH_PARAMETERS[name]}
        for name in names
    ]


def build_openapi() -> dict:
    spec = APISpec(
        title="dark-orchestrator gateway",
        version="1",
        openapi_version="3.0.3",
        plugins=[MarshmallowPlugin()],
        info={"description": "Per-tenant dark-agent VMs: provision, inspect, heal, tear down."},
        security=[{"bearer": []}],
    )
    spec.components.security_scheme("bearer", {"type": "http", "scheme": "bearer"})
    for status, description in _ERRORS.items():
        response = {"description": description, "content": _json(schemas.ErrorOut)}
        if status == "503":
            response["headers"] = {"Retry-After": {"schema": {"type": "integer"}}}
        if status == "401":
            response["headers"] = {"WWW-Authenticate": {"schema": {"type": "string"}}}
        spec.components.response(f"Error{status}", response)

    instance = _path("tenant", "instance_id")
    spec.path(
        path="/instances",
        operations={
            "post": {
                "summary": "Write a pending instance and enqueue its provisioning",
                "parameters": [{"in": "header", "schema": schemas.ProvisionHeaders}],
                "requestBody": {"required": True, "content": _json(schemas.ProvisionRequest)},
                "responses": {
                    **_ok("202", schemas.InstanceAccepted, "accepted; the same key → this again"),
                    **_errors("400", "401", "409", "413", "415", "422", "503"),
                },
            },
            "get": {
                "summary": "List instances, newest first",
                "parameters": [{"in": "query", "schema": schemas.ListQuery}],
                "responses": {
                    **_ok("200", schemas.InstancePage, "a page"),
                    **_errors("401", "422", "503"),
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
                    **_ok("200", schemas.InstanceDetail, "the instance"),
                    **_errors("401", "404", "422", "503"),
                },
            },
            "delete": {
                "summary": "Enqueue the instance's teardown (idempotent)",
                "parameters": [*instance, {"in": "query", "schema": schemas.TeardownQuery}],
                "responses": {
                    **_ok("202", schemas.InstanceAccepted, "accepted"),
                    **_errors("401", "404", "409", "422", "503"),
                },
            },
        },
    )
    spec.path(
        path="/reconcile",
        operations={
            "post": {
                "summary": "Run a reconcile now (one at a time; a concurrent one records nothing)",
                "requestBody": {"required": False, "content": _json(schemas.ReconcileRequest)},
                "responses": {
                    **_ok("202", schemas.ReconcileAccepted, "queued"),
                    **_errors("400", "401", "415", "422", "503"),
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
                    **_ok("200", schemas.ReconcileRunList, "newest first"),
                    **_errors("401", "422", "503"),
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
                    **_ok("200", schemas.TenantList, "by name"),
                    **_errors("401", "422", "503"),
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
                    **_ok("200", schemas.EventList, "oldest first"),
                    **_errors("401", "404", "422", "503"),
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
                "requestBody": {"required": False, "content": _json(schemas.HealRequest)},
                "responses": {
                    **_ok("200", schemas.HealReport, "what the guest said, or why it did not"),
                    **_errors("400", "401", "404", "409", "415", "422", "503"),
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
                    **_ok("200", schemas.TaskState, "the state"),
                    **_errors("401", "404", "503"),
                },
            }
        },
    )
    spec.path(
        path="/health",
        operations={
            "get": {
                "summary": "Liveness: the process answers",
                "security": [],
                "responses": _ok("200", schemas.Health, "alive"),
            }
        },
    )
    spec.path(
        path="/ready",
        operations={
            "get": {
                "summary": "Readiness: Postgres and Redis answer",
                "security": [],
                "responses": {**_ok("200", schemas.Readiness, "ready"), **_errors("503")},
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
                    **_errors("401"),
                },
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
    return spec.to_dict()
