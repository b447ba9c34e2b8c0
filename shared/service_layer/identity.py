"""A tenant's identity is created once: the initializing step's credential
calls, and keeping an identity that a guest holds before its VM goes.

With the real dark-agent every *init* registers another SSH key on the tenant's forges, so *init*
runs once per tenant until offboarding. The instance that inserted the tenant's identity claim
(a row, unlike an advisory lock it survives its holder's connection) is the only one that may
init. It stores the bundle insert-only before anything else, so the identity is durable as soon
as it exists; the Claude token is node-local and not part of the bundle, so it comes after. Every
other instance waits for the bundle and imports it. A retry of the owner (its worker killed after
*init*) first asks its guest to export what it already holds instead of creating another.
"""

import logging
from dataclasses import dataclass

from shared.domain.errors import (
    GuestCredentialsError,
    GuestError,
    GuestUnavailable,
    GuestUnreachable,
    GuestValidation,
)
from shared.domain.guest import GuestIdentity
from shared.domain.lifecycle import Status
from shared.domain.records import Instance
from shared.domain.secrets import Bundle, TenantSecrets
from shared.ports import BundleStore, FleetRegistry, GuestAgent

log = logging.getLogger(__name__)

# An owner in one of these will not store a bundle any more: its claim may be taken over.
_CANNOT_FINISH = frozenset({Status.READY, Status.FAILED, Status.RETIRED, Status.LOST})


OFFBOARDED = "the tenant was offboarded while its identity was being created"


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


def guest_call(what: str, call, *args):
    """Run one credentials call; permanent guest errors become a reason naming the call."""
    try:
        return call(*args)
    except GuestValidation as exc:
        raise GuestStepFailed(f"{_REJECTED[what]}: {_guest_detail(exc)}") from None
    except GuestCredentialsError as exc:
        raise GuestStepFailed(f"guest credentials error during {what}: {exc}") from None


def _guest_detail(exc: GuestValidation) -> str:
    # The guest's own text usually repeats "claude token rejected: ..."; keep only what it adds.
    text = str(exc)
    prefix = "claude token rejected: "
    return text[len(prefix) :] if text.startswith(prefix) else text


def _not_initialised(exc: GuestCredentialsError) -> bool:
    # dark-agent answers 409 {"error": "not initialised"} to an export before any init.
    return exc.details.get("status") == 409


@dataclass(frozen=True)
class Provided:
    identity: GuestIdentity
    reason: str  # for the row's move to ready


class TenantIdentity:
    def __init__(self, *, guest: GuestAgent, bundles: BundleStore, registry: FleetRegistry) -> None:
        self.guest = guest
        self.bundles = bundles
        self.registry = registry

    def provide(self, instance: Instance, secrets: TenantSecrets) -> Provided | None:
        """Give the instance's guest the tenant's identity; None while another instance is
        creating it (poll again). Guest and bundle-backend errors propagate."""
        tenant, address = instance.tenant, instance.address
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
        identity = guest_call("import", self.guest.import_bundle, address, bundle)
        return Provided(identity, "guest imported the tenant's bundle")

    def _create(self, instance: Instance, secrets: TenantSecrets, *, recover: bool):
        """Init (or recover from the guest) the identity and store it first; None when another
        instance's bundle is stored already (the caller imports that one instead)."""
        address = instance.address
        held = self._held_by_guest(address) if recover else None
        if held is None:
            identity = guest_call("init", self.guest.init, address, secrets)
            exported = guest_call("export", self.guest.export, address)
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
            identity = guest_call("import", self.guest.import_bundle, address, exported)
            return Provided(identity, "guest initialised (identity kept from an earlier attempt)")
        return Provided(identity, "guest initialised")

    def _held_by_guest(self, address: str) -> Bundle | None:
        try:
            return self.guest.export(address)
        except GuestCredentialsError as exc:
            if _not_initialised(exc):
                return None
            raise GuestStepFailed(f"guest credentials error during export: {exc}") from None
        except GuestValidation as exc:
            raise GuestStepFailed(f"{_REJECTED['export']}: {_guest_detail(exc)}") from None

    def _cannot_finish(self, owner) -> bool:
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
