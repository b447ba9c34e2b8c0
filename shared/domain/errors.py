"""Domain errors. Adapters translate SDK/transport exceptions into these at their edge.

Messages are written for a person and never contain secret values.
"""


class DomainError(Exception):
    """Base of every error the domain knows about."""

    def __init__(self, message: str = "", **details: object) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def __str__(self) -> str:
        return self.message


# --- lifecycle / registry -------------------------------------------------------------------


class IllegalTransition(DomainError):
    """The lifecycle does not allow this move."""


class TransitionConflict(DomainError):
    """The row was no longer in the expected status (another actor moved it first)."""


class InstanceNotFound(DomainError):
    pass


class InvalidTenantName(DomainError):
    pass


class InvalidCursor(DomainError):
    """A pagination cursor that this registry did not hand out."""


class RegistryUnavailable(DomainError):
    """The registry database could not be reached: retry later (503 at the API)."""


# --- cloud ----------------------------------------------------------------------------------


class CloudError(DomainError):
    """Any cloud failure; `code` is the provider's status name (e.g. RESOURCE_EXHAUSTED)."""

    def __init__(self, message: str = "", code: str = "", **details: object) -> None:
        super().__init__(message, **details)
        self.code = code


class CloudTransient(CloudError):
    """UNAVAILABLE, RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED, ...: retry with backoff."""


class CloudPermanent(CloudError):
    """Will not succeed by retrying (permission, invalid argument, ...)."""


class CloudQuotaExhausted(CloudPermanent):
    """A cloud quota that waiting cannot fix (instances, vCPUs or RAM per cloud): an operator must
    raise it or free capacity. `quota` is the cloud's quota id (e.g. compute.instances.count)."""

    def __init__(self, message: str = "", quota: str = "", **details: object) -> None:
        super().__init__(message, code="RESOURCE_EXHAUSTED", **details)
        self.quota = quota


class CloudNotFound(CloudError):
    pass


class CloudConflict(CloudError):
    """ALREADY_EXISTS: a VM with this name exists (our own earlier attempt)."""


# --- guest (dark-agent) ---------------------------------------------------------------------


class GuestError(DomainError):
    pass


class GuestUnreachable(GuestError):
    """Transport error or timeout."""


class GuestUnavailable(GuestError):
    """503: the guest is up but not ready."""


class GuestValidation(GuestError):
    """400: the guest rejected the input (e.g. the Claude token); no retry."""


class GuestCredentialsError(GuestError):
    """Any other guest failure, including a response we cannot decode."""


# --- tenant secrets (Vault KV) ----------------------------------------------------------------


class SecretsError(DomainError):
    pass


class SecretsMissing(SecretsError):
    """The tenant has no secrets: not onboarded."""


class SecretsBackendUnavailable(SecretsError):
    """Vault unreachable, sealed, or refusing: retry later, never proceed without secrets."""


class SecretsConflict(SecretsError):
    """Check-and-set failed: someone else wrote first."""


# --- credential bundles ---------------------------------------------------------------------


class BundleError(DomainError):
    pass


class BundleBackendUnavailable(BundleError):
    """The bundle could not be read (Postgres or Vault transit down, or it does not decrypt).

    Never to be treated as "no bundle": that would rotate a live tenant's identity.
    """


class BundleIntegrityError(BundleBackendUnavailable):
    """The stored bundle does not decrypt for this tenant (tampered or swapped)."""


# --- fleet commands ---------------------------------------------------------------------------


class TenantNotOnboarded(DomainError):
    """The tenant has not handed over its secrets (or was offboarded): nothing to provision with."""


class QuotaExceeded(DomainError):
    """The tenant already has as many live instances as allowed."""


class DispatchUnavailable(DomainError):
    """The task queue could not be reached; the row is committed and will be picked up later."""
