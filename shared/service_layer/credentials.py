"""The credentials hand-over: the tenant's identity onto a guest, created once.

The pipeline's initializing step checks the guest's health, then calls `TenantIdentity.hand_over`:
read the tenant's secrets, read the VM again, give the guest the tenant's identity (for the
tenant's first VM init → export → store → claude; for every other one import → claude). The
answer is an outcome (`Provided`, `AwaitIdentity`, `NotUp`, `Failed`, `BackendDown`, `CloudRetry`)
that the pipeline turns into ready, a wait, or failed. Before a VM goes, the pipeline asks this
module to keep the identity its guest may hold (`salvage`, `release`).

With the real dark-agent every *init* registers another SSH key on the tenant's forges, so *init*
runs once per tenant until offboarding. The instance that inserted the tenant's identity claim
(a row, unlike an advisory lock it survives its holder's connection) is the only one that may
init. It stores the bundle insert-only before anything else, so the identity is durable as soon
as it exists; the Claude token is node-local and not part of the bundle, so it comes after. Every
other instance waits for the bundle and imports it.

The races, and what closes each:
- Two instances of a tenant without an identity initialise at once: only the claim's owner inits;
  the others poll (`AwaitIdentity`) until the bundle is stored, then import it.
- The owner's worker is killed after *init*, before the bundle is stored: its retry is not the
  call that made the claim, so it first asks its guest to export what it already holds (a 409
  "not initialised" means nothing) instead of creating another identity.
- The owner can no longer store a bundle (ready, failed, retired or lost) while its claim is
  pending: a waiter takes the claim over, compare-and-set on that owner, so two waiters never both
  do.
- The tenant is offboarded while its identity is being created: the store refuses once the claim
  is gone, and with no bundle either the row fails (OFFBOARDED); that identity is abandoned, and a
  re-onboarded tenant gets a new one.
- Another machine answers at the address (the VM stopped, replaced or re-addressed since the health
  check, or between two calls of the hand-over): before *each* call that sends a secret or takes an
  identity back (init, export, import, claude) the VM is read again, and the call goes out only if
  it is RUNNING at the address it was given (`vm_check`); otherwise the row fails ("the VM's
  address changed ...; sent it nothing"). Keeping the identity of a guest going away (`salvage`)
  asks for it only under the same check (`at_its_address`). What remains is the window between
  that read and the call itself, which the VMs' security groups (YC_SECURITY_GROUP_IDS) close from
  the network side.
- The owner fails, or is torn down, mid-init: before the row says failed and before the VM is
  deleted, what its guest holds is stored or the claim released (`salvage`), so a waiter sees the
  identity stored or released, never taken over while it is being kept.
- A secrets or bundle backend is down: never read as "absent"; the step waits (`BackendDown`).
"""

import logging
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TypeVar

from shared.domain.errors import (
    BundleBackendUnavailable,
    CloudError,
    CloudTransient,
    DomainError,
    GuestCredentialsError,
    GuestError,
    GuestUnavailable,
    GuestUnreachable,
    GuestValidation,
    SecretsBackendUnavailable,
    SecretsMissing,
)
from shared.domain.guest import GuestIdentity
from shared.domain.lifecycle import Status
from shared.domain.records import CloudVm, Instance, VmStatus
from shared.domain.secrets import Bundle, TenantSecrets
from shared.ports import BundleStore, Compute, FleetRegistry, GuestAgent, TenantSecretStore
from shared.redaction import mask_message

log = logging.getLogger(__name__)

_R = TypeVar("_R")

# An owner in one of these will not store a bundle any more: its claim may be taken over.
_CANNOT_FINISH = frozenset({Status.READY, Status.FAILED, Status.RETIRED, Status.LOST})


OFFBOARDED = "the tenant was offboarded while its identity was being created"


# --- outcomes of the hand-over --------------------------------------------------------------------


@dataclass(frozen=True)
class Provided:
    """The guest holds the tenant's identity and Claude token: the row moves to ready."""

    identity: GuestIdentity
    reason: str  # for the row's move to ready


@dataclass(frozen=True)
class AwaitIdentity:
    """Another instance is creating the tenant's identity: poll, and import it once stored."""


@dataclass(frozen=True)
class NotUp:
    """The guest (or its VM) is not ready yet: wait, until the boot timeout."""

    why: str
    guest_up: bool = True  # whether the guest may be asked for its identity if this fails


@dataclass(frozen=True)
class Failed:
    """The instance fails with `reason`."""

    reason: str
    guest_up: bool = True


@dataclass(frozen=True)
class BackendDown:
    """The secrets or the bundle backend is unavailable: wait, never proceed without it."""

    error: DomainError


@dataclass(frozen=True)
class CloudRetry:
    """Reading the VM failed transiently: retry with backoff and a cap."""

    error: CloudTransient


Outcome = Provided | AwaitIdentity | NotUp | Failed | BackendDown | CloudRetry


# --- decisions (pure) -----------------------------------------------------------------------------


def at_its_address(vm: CloudVm | None, address: str | None) -> bool:
    """Whether the VM is RUNNING at the address the row was given: only then is it asked or sent
    anything that bears the tenant's identity."""
    return vm is not None and vm.status == VmStatus.RUNNING and vm.address == address


def vm_check(vm: CloudVm | None, address: str | None) -> NotUp | Failed | None:
    """What stops the hand-over given the VM read again now; None when it may go ahead."""
    if vm is None:
        return Failed("the VM disappeared", guest_up=False)
    if vm.status != VmStatus.RUNNING:
        return NotUp(f"the VM is {vm.status}", guest_up=False)
    if vm.address != address:
        reason = f"the VM's address changed from {address} to {vm.address}; sent it nothing"
        return Failed(reason, guest_up=False)
    return None


class _Refused(Exception):
    """The VM, read again before a guest call, is not RUNNING at its address: nothing is sent."""

    def __init__(self, outcome: NotUp | Failed) -> None:
        super().__init__(outcome)
        self.outcome = outcome


class GuestStepFailed(Exception):
    """A credentials call failed for good; `reason` is what the row will say."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


_REJECTED = {
    "init": "the guest rejected the tenant's credentials",
    "claude": "claude token rejected by the guest",
    "export": "the guest could not export the bundle",
    "import": "the guest rejected the tenant's bundle",
}


def refusal(
    what: str, exc: GuestValidation | GuestCredentialsError, known: Iterable[str] = ()
) -> str:
    """What the row says when the guest refuses credentials call `what` for good. The guest's own
    text is masked against `known`, the secret values the call carried or may echo back: a guest
    that quotes its input must not put a bundle or a token into a reason."""
    # Longest first: a value that contains another is masked whole.
    values = sorted(known, key=len, reverse=True)
    if isinstance(exc, GuestValidation):
        return mask_message(f"{_REJECTED[what]}: {_guest_detail(exc)}", values)
    return mask_message(f"guest credentials error during {what}: {exc}", values)


def guest_call(what: str, call: Callable[..., _R], *args: object, known: Iterable[str] = ()) -> _R:
    """Run one credentials call; permanent guest errors become a reason naming the call, masked
    against `known`. Anything else a guest answers (unreachable, 503, not JSON) means it is not
    up yet."""
    try:
        return call(*args)
    except (GuestValidation, GuestCredentialsError) as exc:
        raise GuestStepFailed(refusal(what, exc, known)) from None


def secret_strings(value: object) -> list[str]:
    """Every string value in a bundle's JSON, or a tenant's secret values: what a reason may not
    quote."""
    if isinstance(value, Bundle):
        return secret_strings(value.reveal())
    if isinstance(value, TenantSecrets):
        forges = [forge.token.reveal() for forge in value.forges]
        return [value.claude_oauth_token.reveal(), value.nks_pat.reveal(), *forges]
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in secret_strings(v)]
    if isinstance(value, list | tuple):
        return [s for item in value for s in secret_strings(item)]
    return []


def _guest_detail(exc: GuestValidation) -> str:
    # The guest's own text usually repeats "claude token rejected: ..."; keep only what it adds.
    text = str(exc)
    prefix = "claude token rejected: "
    return text[len(prefix) :] if text.startswith(prefix) else text


def _not_initialised(exc: GuestCredentialsError) -> bool:
    # dark-agent answers 409 {"error": "not initialised"} to an export before any init.
    return exc.details.get("status") == 409


def placed(instance: Instance) -> tuple[str, str]:
    """The provider id and address of an initializing instance's VM. It has both: the move to
    initializing sets the address of the VM its provider id names, and nothing clears either."""
    provider_id, address = instance.provider_id, instance.address
    assert provider_id is not None and address is not None, "an initializing row without its VM"
    return provider_id, address


class TenantIdentity:
    def __init__(
        self,
        *,
        guest: GuestAgent,
        bundles: BundleStore,
        registry: FleetRegistry,
        secrets: TenantSecretStore,
        compute: Compute,
    ) -> None:
        self.guest = guest
        self.bundles = bundles
        self.registry = registry
        self.secrets = secrets
        self.compute = compute

    def hand_over(self, instance: Instance) -> Outcome:
        """Give the guest of an initializing instance, whose health check just passed, the
        tenant's identity and Claude token; the outcome says what the pipeline does next."""
        try:
            try:
                secrets = self.secrets.read(instance.tenant)
            except SecretsMissing:
                return Failed("tenant not onboarded")
            provided = self.provide(instance, secrets)
            if provided is None:
                return AwaitIdentity()
            self._guarded(
                instance, "claude", self.guest.claude, secrets, known=secret_strings(secrets)
            )
            return provided
        except _Refused as exc:
            return exc.outcome
        except GuestError as exc:
            # Unreachable, 503, or an answer that is not one (500, not JSON, oversized): the
            # guest is not ready yet. The calls' permanent errors are GuestStepFailed.
            return NotUp(str(exc))
        except (SecretsBackendUnavailable, BundleBackendUnavailable) as exc:
            return BackendDown(exc)
        except GuestStepFailed as exc:
            return Failed(exc.reason)
        except CloudTransient as exc:
            return CloudRetry(exc)
        except CloudError as exc:
            return Failed(f"cloud error: {exc}")

    def provide(self, instance: Instance, secrets: TenantSecrets) -> Provided | None:
        """Give the instance's guest the tenant's identity; None while another instance is
        creating it (poll again). Guest and bundle-backend errors propagate."""
        tenant = instance.tenant
        bundle = self.bundles.get(tenant)
        if bundle is None:
            owner, claimed_now = self.bundles.claim(tenant, instance.id)
            if owner != instance.id:
                if not self._cannot_finish(owner):
                    return None
                if not self.bundles.take_over(tenant, owner, instance.id):
                    return None
                log.warning(
                    "took over the tenant's identity claim from %s, which cannot finish",
                    owner,
                    extra={"instance_id": instance.id},
                )
            # Not claimed by this very call: an earlier attempt may have run init already.
            made = self._create(instance, secrets, recover=not claimed_now)
            if made is not None:
                return made
            bundle = self.bundles.get(tenant)
            if bundle is None:
                # Not stored because the claim is gone, and no bundle either: offboarding removed
                # them while this guest was creating the identity. That identity is abandoned; a
                # fresh start (a new instance) makes a new one for the re-onboarded tenant.
                raise GuestStepFailed(OFFBOARDED)
        identity = self._guarded(
            instance, "import", self.guest.import_bundle, bundle, known=secret_strings(bundle)
        )
        return Provided(identity, "guest imported the tenant's bundle")

    def _create(
        self, instance: Instance, secrets: TenantSecrets, *, recover: bool
    ) -> Provided | None:
        """Init (or recover from the guest) the identity and store it first; None when another
        instance's bundle is stored already (the caller imports that one instead)."""
        # An export's error can only quote what the guest holds, made from the tenant's secrets.
        tenant_values = secret_strings(secrets)
        held = self._held_by_guest(instance, tenant_values) if recover else None
        if held is None:
            identity = self._guarded(
                instance, "init", self.guest.init, secrets, known=tenant_values
            )
            exported = self._guarded(instance, "export", self.guest.export, known=tenant_values)
        else:
            identity, exported = None, held
        if not self.bundles.put(instance.tenant, exported, instance.id):
            log.warning(
                "the bundle was not stored (another instance's is, or the claim is gone)",
                extra={"instance_id": instance.id},
            )
            return None
        if identity is None:
            # Its own bundle back: how the guest reports the identity it holds.
            identity = self._guarded(
                instance,
                "import",
                self.guest.import_bundle,
                exported,
                known=[*tenant_values, *secret_strings(exported)],
            )
            return Provided(identity, "guest initialised (identity kept from an earlier attempt)")
        return Provided(identity, "guest initialised")

    def _held_by_guest(self, instance: Instance, known: list[str]) -> Bundle | None:
        address = self._check_vm(instance)
        try:
            return self.guest.export(address)
        except GuestCredentialsError as exc:
            if _not_initialised(exc):
                return None
            raise GuestStepFailed(refusal("export", exc, known)) from None
        except GuestValidation as exc:
            raise GuestStepFailed(refusal("export", exc, known)) from None

    def _guarded(
        self,
        instance: Instance,
        what: str,
        call: Callable[..., _R],
        *args: object,
        known: Iterable[str] = (),
    ) -> _R:
        """One credentials call, made only if the VM, read again now, is RUNNING at the address
        the row was given (raises `_Refused` otherwise)."""
        return guest_call(what, call, self._check_vm(instance), *args, known=known)

    def _check_vm(self, instance: Instance) -> str:
        """The address to call, once the VM read again now is RUNNING there (`_Refused` if not)."""
        refused = vm_check(self._read_vm(instance), instance.address)
        if refused is not None:
            log.warning(
                "%s",
                refused.reason if isinstance(refused, Failed) else refused.why,
                extra={"instance_id": instance.id},
            )
            raise _Refused(refused)
        assert instance.address is not None  # vm_check refuses a VM that is not at this address
        return instance.address

    def _read_vm(self, instance: Instance) -> CloudVm | None:
        return self.compute.get_instance(instance.provider_id) if instance.provider_id else None

    def _cannot_finish(self, owner: uuid.UUID) -> bool:
        row = self.registry.get(owner)
        return row is None or row.status in _CANNOT_FINISH

    # --- before the claim owner's VM goes -------------------------------------------------------

    def salvage(self, instance: Instance, *, guest_up: bool = True) -> bool:
        """If the instance holds the tenant's claim and no bundle is stored, store what its guest
        holds (or release the claim when it holds nothing). True when nothing is left to do;
        False while the guest cannot answer (the caller may retry, then `release`)."""
        tenant = instance.tenant
        if self.bundles.pending_claim(tenant) != instance.id:
            return True
        if not instance.address or not guest_up:
            self.release(instance)
            return True
        if not at_its_address(self._read_vm(instance), instance.address):
            # Whatever answers there now is not this instance's guest: take nothing from it.
            log.info(
                "not asking for the identity: the VM is no longer running at its address",
                extra={"instance_id": instance.id},
            )
            self.release(instance)
            return True
        try:
            exported = self.guest.export(instance.address)
        except (GuestUnreachable, GuestUnavailable):
            return False
        except GuestError as exc:
            # "not initialised": no identity was made. Anything else: nothing we can keep.
            log.info("no identity to keep: %s", exc, extra={"instance_id": instance.id})
            self.release(instance)
            return True
        if self.bundles.put(tenant, exported, instance.id):
            log.info("kept the identity of a guest going away", extra={"instance_id": instance.id})
        else:
            log.info(
                "the identity was not kept: offboarded meanwhile, or another was stored",
                extra={"instance_id": instance.id},
            )
        return True

    def release(self, instance: Instance) -> None:
        self.bundles.release(instance.tenant, instance.id)
