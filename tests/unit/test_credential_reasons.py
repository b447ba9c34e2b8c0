"""A guest that quotes its input in an error must not put a bundle value or a tenant's secret into
the row's reason: the hand-over masks the guest's text against the values the call carried."""

import secrets
import uuid
from datetime import UTC, datetime

from shared.domain.errors import GuestCredentialsError, GuestValidation
from shared.domain.lifecycle import Status
from shared.domain.records import CloudVm, Instance, VmStatus
from shared.domain.secrets import Bundle, ForgeCredential, Secret, TenantSecrets
from shared.service_layer.credentials import Failed, TenantIdentity
from tests.fakes import FakeCompute

ADDRESS = "127.0.0.9"


class EchoingGuest:
    """Rejects import (or export) with an error that quotes `echo`."""

    def __init__(self, fail: str, echo: str) -> None:
        self.fail, self.echo = fail, echo

    def init(self, address, tenant_secrets):
        return None

    def export(self, address):
        if self.fail == "export":
            raise GuestValidation(f"cannot export: key material {self.echo} is corrupt")
        raise GuestCredentialsError("not initialised", status=409)

    def import_bundle(self, address, bundle):
        raise GuestValidation(f"bundle rejected: field ssh_private_key={self.echo!r} is malformed")


class OneBundle:
    def __init__(self, bundle: Bundle | None) -> None:
        self.bundle = bundle

    def get(self, tenant):
        return self.bundle

    def claim(self, tenant, instance_id):
        return instance_id, True


class OneTenant:
    def __init__(self, tenant_secrets: TenantSecrets) -> None:
        self.tenant_secrets = tenant_secrets

    def read(self, tenant):
        return self.tenant_secrets


def tenant_secrets() -> TenantSecrets:
    return TenantSecrets(
        claude_oauth_token=Secret("sk-ant-oat01-" + secrets.token_urlsafe(24)),
        nks_pat=Secret("nks pat " + secrets.token_hex(6)),  # spaces: no token-like run to catch
        forges=(ForgeCredential("github", "github.com", Secret("gh " + secrets.token_hex(6))),),
    )


def hand_over(guest, bundles, tenant: TenantSecrets) -> str:
    now = datetime.now(UTC)
    instance = Instance(
        id=uuid.uuid4(),
        tenant="acme",
        status=Status.INITIALIZING,
        vm_name="dark-acme-1",
        idempotency_key=uuid.uuid4(),
        created_at=now,
        updated_at=now,
        status_changed_at=now,
        provider_id="fhm-1",
        address=ADDRESS,
    )
    vm = CloudVm("fhm-1", "dark-acme-1", VmStatus.RUNNING, address=ADDRESS)
    identity = TenantIdentity(
        guest=guest,
        bundles=bundles,
        registry=None,
        secrets=OneTenant(tenant),
        compute=FakeCompute([vm]),
    )
    outcome = identity.hand_over(instance)
    assert isinstance(outcome, Failed), outcome
    return outcome.reason


def test_an_import_error_quoting_the_bundle_leaves_no_bundle_value_in_the_reason():
    # Spaces, so that only masking against the bundle's own values can catch it.
    private_key = "key part " + secrets.token_hex(8)
    bundle = Bundle({"format": "v1", "ssh_private_key": private_key, "nested": [{"x": "y z"}]})
    reason = hand_over(EchoingGuest("import", private_key), OneBundle(bundle), tenant_secrets())
    assert reason.startswith("the guest rejected the tenant's bundle: bundle rejected")
    assert private_key not in reason and "key part" not in reason
    assert "ssh_private_key=" in reason  # the guest's diagnosis stays readable


def test_an_export_error_quoting_a_tenant_secret_leaves_it_out_of_the_reason():
    tenant = tenant_secrets()
    pat = tenant.nks_pat.reveal()
    reason = hand_over(EchoingGuest("export", pat), OneBundle(None), tenant)
    assert reason.startswith("the guest could not export the bundle: cannot export")
    assert pat not in reason
