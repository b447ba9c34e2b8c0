"""Tenant onboarding: the registry's record of a tenant, and the rules onboarding enforces.

The record says whether and when a tenant handed over its secrets; it never holds a secret. The
secrets themselves live only in Vault (docs/ARCHITECTURE.md#secrets).
"""

from dataclasses import dataclass
from datetime import datetime

from shared.domain.errors import DomainError, SecretsConflict
from shared.domain.tenants import TenantName


@dataclass(frozen=True)
class TenantRecord:
    name: TenantName
    # When the current onboarding began; None while the tenant is offboarded (or never was).
    onboarded_at: datetime | None
    # The last PUT or DELETE of the tenant's secrets.
    updated_at: datetime | None
    # The last offboarding; kept after a later re-onboarding, as history.
    offboarded_at: datetime | None
    # The newest Vault KV version recorded; None while offboarded.
    secrets_version: int | None

    @property
    def onboarded(self) -> bool:
        return self.onboarded_at is not None


class SecretsVersionMismatch(SecretsConflict):
    """The caller named the version it expects to replace (If-Match), and it is not current."""


class TenantHasLiveInstances(DomainError):
    """Offboarding would pull the secrets from under VMs that are running or being provisioned."""
