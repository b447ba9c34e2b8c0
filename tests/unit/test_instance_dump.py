"""The list's hand-rolled dump (services/api/schemas.py's `dump_instance`) answers exactly what the
declared schema, InstanceOut, would: the same fields, the same values."""

import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest

from services.api.schemas import InstanceOut, dump_instance
from shared.domain.lifecycle import Status
from shared.domain.records import Instance
from shared.domain.tenants import TenantName

_MOSCOW = timezone(timedelta(hours=3))


def _instance(**overrides) -> Instance:
    instance_id = uuid.uuid4()
    fields = {
        "id": instance_id,
        "tenant": TenantName("acme"),
        "status": Status.READY,
        "vm_name": f"dark-vm-{instance_id}",
        "idempotency_key": uuid.uuid4(),
        "created_at": datetime(2026, 11, 1, 12, 0, 0, 123456, tzinfo=UTC),
        "updated_at": datetime(2026, 11, 2, 8, 30, tzinfo=UTC),
        "status_changed_at": datetime(2026, 11, 2, 8, 30, tzinfo=UTC),
        "provider_id": "fhm0123456789",
        "address": "10.0.0.7",
        "reason": "guest answered",
        "ssh_pubkey": "ssh-ed25519 AAAA",
        "forges": ({"name": "gh", "host": "github.com"},),
        "request_key": "key-1",
    }
    return Instance(**{**fields, **overrides})


@pytest.mark.parametrize(
    "instance",
    [
        _instance(),
        # Nothing optional set yet: a pending row.
        _instance(status=Status.PENDING, provider_id=None, address=None, reason=None),
        # Times in another zone (a session's time zone): both answer them in UTC.
        _instance(
            created_at=datetime(2026, 11, 1, 15, 0, tzinfo=_MOSCOW),
            updated_at=datetime(2026, 11, 1, 15, 0, 0, 1, tzinfo=_MOSCOW),
        ),
        _instance(tenant=TenantName("Müller-Café"), address="2001:db8::1"),
    ],
)
def test_hand_rolled_dump_equals_the_declared_schema(instance):
    assert dump_instance(instance) == InstanceOut().dump(instance)


def test_hand_rolled_dump_names_exactly_the_schemas_fields():
    # A field added to InstanceOut (or to the dump) without the other fails here.
    assert list(dump_instance(_instance())) == list(InstanceOut().dump(_instance()))
