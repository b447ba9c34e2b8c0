"""What the gateway accepts and what it shows (docs/ARCHITECTURE.md#http-contracts), as marshmallow
schemas.

Inputs reject unknown fields (shared/web/parsing.py's StrictSchema). Outputs name exactly the
public fields of a record, so a column added to Instance (a key, a path, a pubkey) never reaches a
response by accident; every output field is dump_only because the server owns it. The routes in
views.py declare which schema each reads and answers with; the OpenAPI document comes from that.
"""

import re
from datetime import UTC

from marshmallow import Schema, ValidationError, fields, validate

from shared.domain import tenants
from shared.domain.errors import InvalidTenantName
from shared.domain.invites import InviteState
from shared.domain.lifecycle import Status
from shared.domain.records import Instance, instance_summary
from shared.service_layer.waits import MAX_WAIT_SECS
from shared.web import TENANT_CONSTRAINTS, TENANT_RULE, StrictSchema

MAX_LIST_LIMIT = 200
DEFAULT_LIST_LIMIT = 50
TEARDOWN_MODES = ("keep", "retire")
# Printable ASCII, so the key is stored and compared exactly as the client sent it. `\Z`, not `$`:
# `$` also matches before a trailing newline (validate.Regexp anchors only the start).
_IDEMPOTENCY_KEY = re.compile(r"[\x20-\x7e]{1,200}\Z")


class TenantName(fields.String):
    """A tenant name, loaded as the domain's TenantName (valid, NFC)."""

    def _deserialize(self, value, attr, data, **kwargs):
        try:
            return tenants.TenantName(value)
        except InvalidTenantName as exc:
            raise ValidationError(exc.message) from None


class UtcDateTime(fields.DateTime):
    """ISO-8601 in UTC, whatever time zone the database session reported."""

    def _serialize(self, value, attr, obj, **kwargs):
        if value is None:
            return None
        return value.astimezone(UTC).isoformat()


def _tenant_field(**kwargs) -> TenantName:
    return TenantName(
        # The spec states the rule validation enforces (shared/web/openapi.py says how exactly).
        metadata={"description": TENANT_RULE, "example": "acme", **TENANT_CONSTRAINTS},
        **kwargs,
    )


# --- requests --------------------------------------------------------------------------------


class ProvisionRequest(StrictSchema):
    tenant = _tenant_field(required=True)


class ProvisionHeaders(StrictSchema):
    """Only the headers this operation reads; the view passes nothing else in."""

    idempotency_key = fields.String(
        data_key="Idempotency-Key",
        validate=validate.Regexp(
            _IDEMPOTENCY_KEY, error="must be 1 to 200 printable ASCII characters"
        ),
        metadata={"description": "same key (per tenant) → the same instance and task"},
    )


class ListQuery(StrictSchema):
    PURE_QUERY = True
    tenant = _tenant_field()
    status = fields.Enum(Status, by_value=True)
    limit = fields.Integer(
        load_default=DEFAULT_LIST_LIMIT, validate=validate.Range(1, MAX_LIST_LIMIT)
    )
    cursor = fields.String(
        validate=validate.Length(1, 512),
        metadata={"description": "`next_cursor` of the previous page"},
    )


class TeardownQuery(StrictSchema):
    mode = fields.String(
        load_default="keep",
        validate=validate.OneOf(TEARDOWN_MODES),
        metadata={
            "description": "keep: the tenant's bundle stays; retire: it is deleted when this "
            "was the tenant's last live instance"
        },
    )


class HealRequest(StrictSchema):
    """Heal takes no fields; a body, if sent, must be an empty object."""


class StatusList(fields.Field):
    """Statuses, comma-separated in one query parameter (a repeated key is refused everywhere)."""

    def _deserialize(self, value, attr, data, **kwargs):
        if not isinstance(value, str):
            raise ValidationError("expected comma-separated statuses")
        names = [name.strip() for name in value.split(",")]
        try:
            return [Status(name) for name in names]
        except ValueError:
            known = ", ".join(status.value for status in Status)
            raise ValidationError(f"each status must be one of: {known}") from None


class WaitQuery(StrictSchema):
    status = StatusList(
        load_default=lambda: [Status.READY],
        metadata={
            "description": "the statuses to wait for, comma-separated (default: ready)",
            "type": "string",
            "example": "initializing,ready",
        },
    )
    timeout = fields.Float(
        load_default=MAX_WAIT_SECS,
        validate=validate.Range(0, MAX_WAIT_SECS),
        metadata={"description": f"seconds to wait at most, 0 to {MAX_WAIT_SECS}"},
    )


class TenantsQuery(StrictSchema):
    """The tenant list takes no parameters."""

    PURE_QUERY = True


# --- responses -------------------------------------------------------------------------------


class InstanceOut(Schema):
    id = fields.UUID(dump_only=True)
    tenant = fields.String(dump_only=True)
    status = fields.Enum(Status, by_value=True, dump_only=True)
    vm_name = fields.String(dump_only=True)
    provider_id = fields.String(dump_only=True, allow_none=True)
    address = fields.String(dump_only=True, allow_none=True)
    reason = fields.String(dump_only=True, allow_none=True)
    created_at = UtcDateTime(dump_only=True)
    updated_at = UtcDateTime(dump_only=True)


def dump_instance(instance: Instance) -> dict[str, object]:
    """`InstanceOut().dump(instance)`, by hand: the list answers up to 200 of these per request, and
    marshmallow's field-by-field dump was most of that request's time. Same fields, same values
    (tests/unit/test_instance_dump.py holds the two equal, field set included); the registry's
    `list_json` writes the same objects in SQL."""
    return instance_summary(instance)


class EventOut(Schema):
    at = UtcDateTime(dump_only=True)
    from_status = fields.Enum(
        Status, by_value=True, dump_only=True, allow_none=True, data_key="from"
    )
    to_status = fields.Enum(Status, by_value=True, dump_only=True, data_key="to")
    reason = fields.String(dump_only=True, allow_none=True)


class InstanceAccepted(Schema):
    instance = fields.Nested(InstanceOut, dump_only=True)
    task_id = fields.String(
        dump_only=True,
        allow_none=True,
        metadata={"description": "null when there is nothing to do (already retired)"},
    )


class InstanceWaited(Schema):
    instance = fields.Nested(InstanceOut, dump_only=True)
    reached = fields.Boolean(
        dump_only=True,
        metadata={
            "description": "the instance is in one of the wanted statuses; false when it settled "
            "elsewhere (failed, retired, lost) or the timeout passed"
        },
    )


class InstancePage(Schema):
    items = fields.List(fields.Nested(InstanceOut), dump_only=True)
    next_cursor = fields.String(dump_only=True, allow_none=True)


class EntryPoints(Schema):
    opencode_url = fields.String(dump_only=True)
    agent_url = fields.String(dump_only=True)


class ForgeOut(Schema):
    """A forge's registration as the guest reported it after init; never its token."""

    name = fields.String(dump_only=True)
    host = fields.String(dump_only=True, allow_none=True)
    registered = fields.Boolean(dump_only=True)


class GuestHealthOut(Schema):
    status = fields.String(dump_only=True)
    version = fields.String(dump_only=True, allow_none=True)
    uptime_secs = fields.Float(dump_only=True, allow_none=True)


class GuestView(Schema):
    reachable = fields.Boolean(dump_only=True)
    health = fields.Nested(GuestHealthOut, dump_only=True, allow_none=True)
    error = fields.String(dump_only=True, allow_none=True)


class InstanceDetail(Schema):
    instance = fields.Nested(InstanceOut, dump_only=True)
    entry_points = fields.Nested(
        EntryPoints,
        dump_only=True,
        allow_none=True,
        metadata={"description": "null while the instance has no address"},
    )
    guest = fields.Nested(GuestView, dump_only=True)
    ssh_pubkey = fields.String(
        dump_only=True,
        allow_none=True,
        metadata={
            "description": "the public key dark-agent registered with the tenant's forges; "
            "null until the instance is ready"
        },
    )
    forges = fields.List(
        fields.Nested(ForgeOut),
        dump_only=True,
        metadata={
            "description": "the forge registration summary from init: each forge and whether "
            "dark-agent registered the VM's key with it; empty until the instance is ready"
        },
    )


class EventList(Schema):
    items = fields.List(fields.Nested(EventOut), dump_only=True)


class InviteStateOut(Schema):
    """A tenant's current invite; never its token or the token's digest."""

    state = fields.Enum(
        InviteState,
        by_value=True,
        dump_only=True,
        metadata={"description": "none | pending (until expires_at) | used | expired"},
    )
    expires_at = UtcDateTime(dump_only=True, allow_none=True)
    used_at = UtcDateTime(
        dump_only=True,
        allow_none=True,
        metadata={"description": "when the tenant first stored its secrets with it"},
    )


class InviteIssued(Schema):
    token = fields.String(
        dump_only=True,
        metadata={"description": "the tenant's onboarding token; shown this once, stored hashed"},
    )
    url = fields.String(
        dump_only=True,
        metadata={"description": "the onboarding page with the token in the fragment (#token=…)"},
    )
    expires_at = UtcDateTime(dump_only=True)


class TenantOut(Schema):
    name = fields.String(dump_only=True)
    onboarded = fields.Boolean(dump_only=True)
    onboarded_at = fields.DateTime(dump_only=True, allow_none=True)
    updated_at = fields.DateTime(dump_only=True, allow_none=True)
    offboarded_at = fields.DateTime(dump_only=True, allow_none=True)
    secrets_version = fields.Integer(dump_only=True, allow_none=True)
    live_instances = fields.Integer(dump_only=True)
    invite = fields.Nested(InviteStateOut, dump_only=True)


class TenantList(Schema):
    items = fields.List(fields.Nested(TenantOut), dump_only=True)


class ReconcileAction(Schema):
    kind = fields.String(dump_only=True)
    instance_id = fields.String(dump_only=True, allow_none=True)
    vm_id = fields.String(dump_only=True, allow_none=True)
    vm_name = fields.String(dump_only=True, allow_none=True)
    tenant = fields.String(dump_only=True, allow_none=True)
    detail = fields.String(dump_only=True, allow_none=True)
    result = fields.String(dump_only=True, allow_none=True)
    held_back = fields.Boolean(
        dump_only=True,
        metadata={"description": "not taken: the run was over RECONCILE_MAX_DESTRUCTIVE"},
    )


class ReconcileRunOut(Schema):
    id = fields.Integer(dump_only=True)
    started_at = fields.DateTime(dump_only=True)
    finished_at = fields.DateTime(dump_only=True, allow_none=True)
    dry_run = fields.Boolean(dump_only=True)
    outcome = fields.String(
        dump_only=True,
        allow_none=True,
        metadata={
            "description": "applied | dry_run | refused (over RECONCILE_MAX_DESTRUCTIVE: the "
            "actions judged from an absence were held back); null while unfinished"
        },
    )
    trigger = fields.String(dump_only=True)
    counts = fields.Dict(keys=fields.String(), values=fields.Integer(), dump_only=True)
    actions = fields.List(fields.Nested(ReconcileAction), dump_only=True)
    errors = fields.List(fields.Raw(), dump_only=True)


class ReconcileRunList(Schema):
    items = fields.List(fields.Nested(ReconcileRunOut), dump_only=True)


class ReconcileRunsQuery(StrictSchema):
    PURE_QUERY = True
    limit = fields.Integer(load_default=20, validate=validate.Range(min=1, max=100))


MAX_CONFIRM_DESTRUCTIVE = 100_000


class ReconcileRequest(StrictSchema):
    dry_run = fields.Boolean(load_default=False)
    confirm_destructive = fields.Integer(
        load_default=0,
        strict=True,
        validate=validate.Range(0, MAX_CONFIRM_DESTRUCTIVE),
        metadata={
            "description": "approve this one run to take up to this many actions judged from an "
            "absence (orphan deletes, lost marks) above RECONCILE_MAX_DESTRUCTIVE"
        },
    )


class ReconcileAccepted(Schema):
    task_id = fields.String(dump_only=True)


class HealReport(Schema):
    reachable = fields.Boolean(dump_only=True)
    heal = fields.Dict(dump_only=True, allow_none=True)
    error = fields.String(dump_only=True, allow_none=True)


class TaskState(Schema):
    task_id = fields.String(dump_only=True)
    state = fields.String(
        dump_only=True,
        metadata={"description": "Celery state; an unknown task id reads as PENDING"},
    )
    ready = fields.Boolean(dump_only=True)


class Readiness(Schema):
    postgres = fields.String(dump_only=True)
    redis = fields.String(dump_only=True)
