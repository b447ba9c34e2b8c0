"""The gateway's routes (docs/ARCHITECTURE.md#http-contracts): decode the request, call one handler,
encode the answer.

Commands go through FleetService; reads go to the registry; the live guest view and heal go to the
guest agent; a reconcile run and task states go through the Celery wiring (GatewayTasks). Each
reaches them through the container shared.bootstrap.build_gateway built (`GatewayServices`).
Errors are raised and leave through shared/web/errors.py's handler.
"""

import json
import logging
import re
import uuid
from datetime import datetime
from urllib.parse import quote

from flask import current_app, g
from werkzeug.exceptions import NotFound

from services.api.schemas import (
    EventList,
    HealReport,
    HealRequest,
    InstanceAccepted,
    InstanceDetail,
    InstancePage,
    InstanceWaited,
    InviteIssued,
    ListQuery,
    ProvisionHeaders,
    ProvisionRequest,
    Readiness,
    ReconcileAccepted,
    ReconcileRequest,
    ReconcileRunList,
    ReconcileRunsQuery,
    TaskState,
    TeardownQuery,
    TenantList,
    TenantsQuery,
    WaitQuery,
)
from shared.bootstrap import GatewayServices
from shared.domain.errors import DispatchUnavailable, GuestError, GuestUnreachable, InstanceNotFound
from shared.domain.invites import Invite, InviteState
from shared.domain.lifecycle import Status, can_heal
from shared.domain.records import Instance
from shared.domain.tenants import TenantName
from shared.redaction import redact
from shared.service_layer.waits import TooManyWaits, wait_for_status
from shared.web import (
    ApiBlueprint,
    ApiError,
    add_open_routes,
    error_responses,
    public,
    tenant_parameter,
)

log = logging.getLogger("dark.api")

bp = ApiBlueprint("gateway", __name__)

_LOCATION = {
    "Location": {
        "description": "the instance's path, tenant percent-encoded",
        "schema": {"type": "string"},
    }
}

OPENCODE_PORT = 4096
# The detail view waits this long for the guest: a slow guest must not make the API slow.
GUEST_VIEW_TIMEOUT_SECS = 2.0
# A refused wait retries after this long: waits end within a minute, most much sooner.
WAIT_RETRY_AFTER_SECS = 2
# Celery task ids are UUIDs; anything else cannot name one of ours.
_TASK_ID = re.compile(r"[0-9a-fA-F-]{36}\Z")


def _gateway() -> GatewayServices:
    gateway: GatewayServices = current_app.extensions["dark"]
    return gateway


# --- commands --------------------------------------------------------------------------------

_INSTANCE = [tenant_parameter()]
_TASK = [
    {
        "in": "path",
        "name": "task_id",
        "required": True,
        "schema": {"type": "string", "format": "uuid"},
    }
]


@bp.route("/instances", methods=["POST"])
@bp.arguments(ProvisionRequest)
@bp.arguments(ProvisionHeaders, location="headers")
@bp.response(
    202, InstanceAccepted, description="accepted; the same key → this again", headers=_LOCATION
)
@error_responses(bp, 400, 401, 409, 413, 415, 422, 503)
def provision(body: dict, headers: dict):
    """Write a pending instance and enqueue its provisioning

    A 503 leaves no instance behind, so retrying never makes a second VM; only when the registry
    failed as well does it keep the instance, and `details.instance_id` names it. A repeat with
    an `Idempotency-Key` whose instance was accepted earlier keeps that instance.
    """
    instance, task_id = _gateway().fleet.provision(
        body["tenant"], request_key=headers.get("idempotency_key"), request_id=g.request_id
    )
    return _accepted(instance, task_id)


@bp.route("/instances/<tenant>/<uuid:instance_id>", methods=["DELETE"], parameters=_INSTANCE)
@bp.arguments(TeardownQuery, location="query")
@bp.response(202, InstanceAccepted, description="accepted", headers=_LOCATION)
@error_responses(bp, 401, 404, 409, 422, 503)
def teardown(query: dict, tenant: str, instance_id: uuid.UUID):
    """Enqueue the instance's teardown (idempotent)"""
    # FleetService treats another tenant's instance as unknown.
    instance, task_id = _gateway().fleet.teardown(
        TenantName(tenant), instance_id, mode=query["mode"], request_id=g.request_id
    )
    return _accepted(instance, task_id)


@bp.route("/instances/<tenant>/<uuid:instance_id>/heal", methods=["POST"], parameters=_INSTANCE)
@bp.arguments(HealRequest, location="json_or_empty", required=False)
@bp.response(200, HealReport, description="what the guest said, or why it did not")
@error_responses(bp, 400, 401, 404, 409, 415, 422, 503)
def heal(_body: dict, tenant: str, instance_id: uuid.UUID):
    """Drive the guest's self-repair and return its report"""
    instance = _owned_instance(tenant, instance_id)
    if not can_heal(instance.status, instance.address) or instance.address is None:
        raise ApiError(
            409,
            "instance_not_ready",
            "heal needs an instance with a VM (initializing, ready, failed or lost, with an "
            f"address); this one is {instance.status.value}"
            + ("" if instance.address else " with no address"),
            {"status": instance.status.value},
        )
    try:
        report = _gateway().guest.heal(instance.address)
    except GuestUnreachable as exc:
        return {"reachable": False, "heal": None, "error": redact(str(exc))}
    except GuestError as exc:
        return {"reachable": True, "heal": None, "error": redact(str(exc))}
    return {"reachable": True, "heal": report, "error": None}


@bp.route("/reconcile", methods=["POST"])
@bp.arguments(ReconcileRequest, location="json_or_empty", required=False)
@bp.response(202, ReconcileAccepted, description="queued")
@error_responses(bp, 400, 401, 415, 422, 503)
def trigger_reconcile(body: dict):
    """Run a reconcile now (one at a time; a concurrent one records nothing)

    A run over RECONCILE_MAX_DESTRUCTIVE actions judged from an absence takes none of them and is
    recorded refused; `confirm_destructive` approves that many for this one run.
    """
    # Runs stay one at a time: a run that finds another one going records nothing, so a burst of
    # requests cannot overlap runs.
    task_id = _gateway().tasks.send_reconcile(
        trigger="api",
        dry_run=body["dry_run"],
        confirm_destructive=body["confirm_destructive"],
    )
    log.info(
        "reconcile requested (dry_run=%s, confirm_destructive=%d)",
        body["dry_run"],
        body["confirm_destructive"],
    )
    return {"task_id": task_id}


@bp.route("/tenants/<tenant>/invites", methods=["POST"], parameters=[tenant_parameter()])
@bp.response(201, InviteIssued, description="issued; the token is shown this once")
@error_responses(bp, 401, 422, 503)
def issue_invite(tenant: str):
    """Issue the tenant's onboarding token (an invite); its previous invite stops working

    Hand `url` to the tenant: the onboarding page reads the token from the URL's fragment, which
    a browser never sends to a server. Only the token's SHA-256 is stored.
    """
    gateway = _gateway()
    issued = gateway.invites.issue(TenantName(tenant))
    token = issued.token.reveal()
    return {
        "token": token,
        "url": f"{gateway.onboarding_page_url}#token={token}",
        "expires_at": issued.expires_at,
    }, 201


@bp.route("/tenants/<tenant>/invites", methods=["DELETE"], parameters=[tenant_parameter()])
@bp.response(204, description="revoked (or there was none)")
@error_responses(bp, 401, 422, 503)
def revoke_invite(tenant: str):
    """Revoke the tenant's invite (idempotent); what it already stored stays"""
    _gateway().invites.revoke(TenantName(tenant))
    response = current_app.response_class(status=204)
    # A 204 has no body, so it has no media type either.
    del response.headers["Content-Type"]
    return response


# --- reads -----------------------------------------------------------------------------------


@bp.route("/reconcile/runs")
@bp.arguments(ReconcileRunsQuery, location="query")
@bp.response(200, ReconcileRunList, description="newest first")
@error_responses(bp, 401, 422, 503)
def reconcile_runs(query: dict):
    """The latest reconcile runs, newest first, with their actions"""
    return {"items": _gateway().runs.latest(query["limit"])}


@bp.route("/instances")
# An instance, not the class: webargs would build a schema object per request from a class
# (flask-smorest takes either; its annotation names only the class).
@bp.arguments(ListQuery(), location="query")  # type: ignore[arg-type]
@bp.response(200, InstancePage, description="a page")
@error_responses(bp, 401, 422, 503)
def list_instances(query: dict):
    """List instances, newest first"""
    items, next_cursor = _gateway().registry.list_json(
        tenant=query.get("tenant"),
        statuses=[query["status"]] if "status" in query else None,
        limit=query["limit"],
        cursor=query.get("cursor"),
    )
    # The InstancePage the route declares, byte for byte as the app's JSON provider would write
    # {"items": [...], "next_cursor": ...} (keys sorted, no whitespace, a final newline); the
    # registry hands out the items already written (FleetRegistry.list_json).
    body = f'{{"items":{items},"next_cursor":{json.dumps(next_cursor)}}}\n'
    return current_app.response_class(body, mimetype="application/json")


@bp.route("/tenants")
@bp.arguments(TenantsQuery, location="query")
@bp.response(200, TenantList, description="by name")
@error_responses(bp, 401, 422, 503)
def list_tenants(_query: dict):
    """Tenants, whether each is onboarded, their invite's state, and their live VMs (no secrets)

    Tenants with live instances but no directory row (onboarded before the directory existed, or
    rows written by hand) are listed too, as not onboarded; so are tenants invited but not yet
    onboarded.
    """
    gateway = _gateway()
    live = gateway.registry.live_counts()
    records = {record.name: record for record in gateway.tenants.list()}
    invites = gateway.invites.current()
    now = gateway.invites.now()
    items = [
        {
            "name": name,
            "onboarded": record.onboarded if record else False,
            "onboarded_at": record.onboarded_at if record else None,
            "updated_at": record.updated_at if record else None,
            "offboarded_at": record.offboarded_at if record else None,
            "secrets_version": record.secrets_version if record else None,
            "live_instances": live.get(name, 0),
            "invite": _invite_view(invites.get(name), now),
        }
        for name in sorted(records.keys() | live.keys() | invites.keys())
        for record in [records.get(name)]
    ]
    return {"items": items}


@bp.route("/instances/<tenant>/<uuid:instance_id>", parameters=_INSTANCE)
@bp.response(200, InstanceDetail, description="the instance")
@error_responses(bp, 401, 404, 422, 503)
def show_instance(tenant: str, instance_id: uuid.UUID):
    """An instance, its entry points and a live look at its guest"""
    instance = _owned_instance(tenant, instance_id)
    address = _current_address(instance)
    entry_points = None
    if address is not None:
        agent_port = _gateway().agent_port
        entry_points = {
            "opencode_url": f"http://{_host(address)}:{OPENCODE_PORT}",
            "agent_url": f"http://{_host(address)}:{agent_port}",
        }
    return {
        "instance": instance,
        "entry_points": entry_points,
        "guest": _guest_view(instance),
        "ssh_pubkey": instance.ssh_pubkey,
        "forges": list(instance.forges),
    }


@bp.route("/instances/<tenant>/<uuid:instance_id>/events", parameters=_INSTANCE)
@bp.response(200, EventList, description="oldest first")
@error_responses(bp, 401, 404, 422, 503)
def instance_events(tenant: str, instance_id: uuid.UUID):
    """The instance's lifecycle timeline"""
    instance = _owned_instance(tenant, instance_id)
    return {"items": _gateway().registry.events(instance.id)}


@bp.route("/instances/<tenant>/<uuid:instance_id>/wait", parameters=_INSTANCE)
@bp.arguments(WaitQuery, location="query")
@bp.response(200, InstanceWaited, description="reached, settled elsewhere, or timed out")
@error_responses(bp, 401, 404, 422, 429, 503)
def wait_instance(query: dict, tenant: str, instance_id: uuid.UUID):
    """Hold the request until the instance reaches a wanted status or settles (failed, retired,
    lost), or `timeout` seconds pass; then answer with it as it is

    Each process serves DARK_MAX_OPEN_WAITS waits at once; beyond that it answers 429 with
    `Retry-After`.
    """
    gateway = _gateway()
    instance = _owned_instance(tenant, instance_id)
    try:
        with gateway.waits.slot():
            outcome = wait_for_status(gateway.registry, instance, query["status"], query["timeout"])
    except TooManyWaits:
        raise ApiError(
            429,
            "too_many_waits",
            f"this gateway process already holds {gateway.waits.limit} open waits; retry shortly",
            headers={"Retry-After": str(WAIT_RETRY_AFTER_SECS)},
        ) from None
    return {"instance": outcome.instance, "reached": outcome.reached}


@bp.route("/tasks/<task_id>", parameters=_TASK)
@bp.response(200, TaskState, description="the state")
@error_responses(bp, 401, 404, 503)
def task_state(task_id: str):
    """A Celery task's state"""
    if not _TASK_ID.match(task_id):
        raise NotFound("no such task")
    try:
        state = _gateway().tasks.state(task_id)
    except DispatchUnavailable as exc:
        log.warning("task state unavailable: %s", exc.__cause__)
        raise ApiError(
            503, "result_backend_unavailable", "task states cannot be read right now"
        ) from None
    # The state only: a task's result or traceback is the worker's business, not the caller's.
    return {"task_id": task_id, "state": state.state, "ready": state.ready}


# --- open endpoints --------------------------------------------------------------------------

add_open_routes(bp)


@bp.route("/ready")
@public
@bp.doc(security=[])
# Documented only: the answer is the checks as they are.
@bp.alt_response(200, schema=Readiness, description="ready", success=True)
@error_responses(bp, 503)
def ready():
    """Readiness: Postgres and Redis answer"""
    checks = {}
    for name, probe in _gateway().probes.items():
        try:
            probe()
            checks[name] = "ok"
        except Exception as exc:  # any failure of a probe means "not ready", whatever its type
            log.warning("readiness: %s unavailable: %s", name, exc)
            checks[name] = "unavailable"
    failed = [name for name, result in checks.items() if result != "ok"]
    if failed:
        raise ApiError(503, "not_ready", f"unavailable: {', '.join(failed)}", checks)
    return checks


# --- helpers ---------------------------------------------------------------------------------


def _owned_instance(tenant: str, instance_id: uuid.UUID) -> Instance:
    """The instance if it belongs to `tenant`; another tenant's is as unknown as a missing one."""
    tenant = TenantName(tenant)
    instance = _gateway().registry.get(instance_id)
    if instance is None or instance.tenant != tenant:
        raise InstanceNotFound("no such instance for this tenant")
    return instance


def _invite_view(invite: Invite | None, now: datetime) -> dict:
    if invite is None:
        return {"state": InviteState.NONE, "expires_at": None, "used_at": None}
    return {
        "state": invite.state(now),
        "expires_at": invite.expires_at,
        "used_at": invite.used_at,
    }


def _current_address(instance: Instance) -> str | None:
    # A retired VM's public address may already belong to someone else's VM.
    if instance.status is Status.RETIRED:
        return None
    return instance.address


def _host(address: str) -> str:
    return f"[{address}]" if ":" in address else address


def _guest_view(instance: Instance) -> dict:
    address = _current_address(instance)
    if address is None:
        return {"reachable": False, "health": None, "error": "the instance has no address"}
    try:
        health = _gateway().guest.health(address, timeout=GUEST_VIEW_TIMEOUT_SECS)
    except GuestUnreachable as exc:
        return {"reachable": False, "health": None, "error": redact(str(exc))}
    except GuestError as exc:
        # It answered, just not with health (e.g. 503 while booting).
        return {"reachable": True, "health": None, "error": redact(str(exc))}
    return {"reachable": True, "health": health, "error": None}


def _accepted(instance: Instance, task_id: str | None):
    body = {"instance": instance, "task_id": task_id}
    # Percent-encoded: a header carries Latin-1 only, and tenant names are any letters.
    location = f"/instances/{quote(instance.tenant, safe='')}/{instance.id}"
    return body, 202, {"Location": location}
