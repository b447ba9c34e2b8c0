"""Onboarding handlers: store, show and remove a tenant's secrets
(docs/ARCHITECTURE.md#http-contracts and docs/ARCHITECTURE.md#secrets).

Vault is the source of truth for the secrets and their version; the tenant directory in Postgres
follows it, and is written after each Vault change. When the directory write fails after Vault
changed, the caller gets RegistryUnavailable (a 503) and retrying the same request converges both.

A tenant's own writes (with its invite) and its offboarding hold the tenant's lock, one at a time.
The invite is checked again under that lock, and offboarding revokes the invite before taking it:
a write that passed its token check just before an offboarding can then neither land after it
(putting back the secrets of a tenant just offboarded) nor between its steps.
"""

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from shared.domain.errors import RegistryUnavailable, SecretsConflict, SecretsMissing
from shared.domain.secrets import SecretsPresence, TenantSecrets
from shared.domain.tenant_records import SecretsVersionMismatch, TenantHasLiveInstances
from shared.domain.tenants import TenantName
from shared.ports import BundleRemover, FleetRegistry, Locks, TenantDirectory, TenantSecretStore

log = logging.getLogger("dark.onboarding")

# How long a write or an offboarding waits for another change to the same tenant to finish.
LOCK_WAIT_SECS = 5.0
_LOCK_POLL_SECS = 0.05


class Onboarding:
    """`fleet` is read only for the tenant's live instances (`count_live`); `bundles` removes the
    tenant's bundle and identity claim."""

    def __init__(
        self,
        secrets: TenantSecretStore,
        tenants: TenantDirectory,
        fleet: FleetRegistry,
        bundles: BundleRemover,
        locks: Locks,
    ) -> None:
        self._secrets = secrets
        self._tenants = tenants
        self._fleet = fleet
        self._bundles = bundles
        self._locks = locks

    def store(
        self,
        tenant: TenantName,
        secrets: TenantSecrets,
        *,
        expected_version: int | None = None,
        still_allowed: Callable[[], bool] | None = None,
    ) -> int:
        """Replace the tenant's secrets; returns the new version.

        Never a blind overwrite: the write is a KV check-and-set against `expected_version` (the
        caller's If-Match) or, without one, against the version read just before writing, 0 when
        there is none. So of two racing writers one fails with SecretsConflict instead of silently
        replacing what the other just wrote; with `expected_version`, a stale caller gets
        SecretsVersionMismatch.

        A write on a tenant's own behalf passes `still_allowed` (its invite is still current): it
        is asked again under the tenant's lock, which offboarding holds too; False → SecretsMissing,
        as for a tenant that does not exist. An admin's write needs no lock: the check-and-set
        orders it against any other write, and offboarding is the admin's own decision.
        """
        if still_allowed is None:
            return self._store(tenant, secrets, expected_version)
        with self._tenant_lock(tenant):
            if not still_allowed():
                raise SecretsMissing("tenant not onboarded", tenant=tenant)
            return self._store(tenant, secrets, expected_version)

    def _store(
        self, tenant: TenantName, secrets: TenantSecrets, expected_version: int | None
    ) -> int:
        if expected_version is None:
            current = self._secrets.presence(tenant)
            cas = current.version if current is not None else 0
        else:
            cas = expected_version
        try:
            version = self._secrets.write(tenant, secrets, cas=cas)
        except SecretsConflict:
            if expected_version is not None:
                raise SecretsVersionMismatch(
                    f"the tenant's secrets are not at version {expected_version}; read the "
                    "current version and retry",
                    tenant=tenant,
                ) from None
            raise SecretsConflict(
                "the tenant's secrets were changed concurrently; retry", tenant=tenant
            ) from None
        try:
            self._tenants.record_onboarded(tenant, version)
        except RegistryUnavailable:
            raise RegistryUnavailable(
                f"the secrets were stored as version {version}, but the tenant directory could "
                "not record it; retry the request",
                tenant=tenant,
            ) from None
        log.info("tenant secrets stored as version %d", version, extra={"tenant": tenant})
        return version

    def status(self, tenant: TenantName) -> SecretsPresence:
        """Which fields are set, the version and when; SecretsMissing when not onboarded."""
        presence = self._secrets.presence(tenant)
        if presence is None:
            raise SecretsMissing("tenant not onboarded", tenant=tenant)
        return presence

    def offboard(self, tenant: TenantName, *, force: bool = False) -> None:
        """Remove the tenant's secrets and its bundle (docs/ARCHITECTURE.md#secrets: a name reused
        later starts a new identity); refused while it has live instances unless `force`.

        The directory is marked first, so that a failure in between leaves the tenant refused by
        the gateway (with its secrets still in Vault, removed by a retry) rather than accepted with
        its secrets gone. Offboarding a tenant that is not onboarded succeeds (idempotent).
        """
        with self._tenant_lock(tenant):
            self._offboard(tenant, force)

    def _offboard(self, tenant: TenantName, force: bool) -> None:
        live = self._fleet.count_live(tenant)
        if live and not force:
            raise TenantHasLiveInstances(
                f"tenant {tenant} has {live} live instance(s); tear them down first, or offboard "
                "with force=true",
                tenant=tenant,
                live_instances=live,
            )
        self._tenants.record_offboarded(tenant)
        self._bundles.delete(tenant)
        self._secrets.delete(tenant)
        log.info("tenant offboarded (live instances: %d)", live, extra={"tenant": tenant})

    @contextmanager
    def _tenant_lock(self, tenant: TenantName) -> Iterator[None]:
        """The tenant's lock, waited for up to LOCK_WAIT_SECS (SecretsConflict after that)."""
        deadline = time.monotonic() + LOCK_WAIT_SECS
        while True:
            with self._locks.hold(f"onboarding:{tenant}") as taken:
                if taken:
                    yield
                    return
            if time.monotonic() >= deadline:
                raise SecretsConflict(
                    "another change to this tenant's secrets is under way; retry", tenant=tenant
                )
            time.sleep(_LOCK_POLL_SECS)
