"""Tenant secrets in Vault's KV v2 through hvac (failure translation: see `vault_client`)."""

from typing import Any, NamedTuple
from urllib.parse import quote

import hvac
from hvac.exceptions import InvalidPath, InvalidRequest

from shared.adapters.vault_client import VAULT_FAILURES
from shared.domain.errors import SecretsBackendUnavailable, SecretsConflict, SecretsMissing
from shared.domain.secrets import ForgeCredential, Secret, SecretsPresence, TenantSecrets
from shared.domain.tenants import TenantName


def tenant_secret_path(tenant: TenantName) -> str:
    """The KV path of a tenant's secrets, relative to the mount.

    Quoting with no safe character makes the name a single segment whatever it holds. hvac quotes
    path arguments once more and Vault decodes once, so the stored key is exactly this encoded
    form. A TenantName already forbids '/', '%' and a leading '.', so no name encodes to '.'
    or '..' and no two names share an encoding. Here, where a name becomes a path, a plain str
    from a caller the type checker does not see is still checked: `TenantName()` returns a
    TenantName as it is, and validates anything else.
    """
    return "tenants/" + quote(TenantName(tenant), safe="")


class _StoredSecrets(NamedTuple):
    secrets: TenantSecrets
    version: int  # the same as secrets.version, known to be set
    created_time: str


class HvacTenantSecrets:
    """TenantSecretStore on KV v2, one key per tenant under `tenants/`."""

    def __init__(self, client: hvac.Client, kv_mount: str = "secret") -> None:
        self._kv = client.secrets.kv.v2
        self._mount = kv_mount

    def read(self, tenant: TenantName) -> TenantSecrets:
        return self._read(tenant).secrets

    def write(self, tenant: TenantName, secrets: TenantSecrets, *, cas: int | None = None) -> int:
        """Store a new version; returns its number. `cas` = the version the caller last read."""
        path = tenant_secret_path(tenant)
        try:
            response = self._kv.create_or_update_secret(
                path, _encode(secrets), cas=cas, mount_point=self._mount
            )
        except InvalidRequest as exc:
            # With check-and-set, a stale version is the only thing Vault rejects in a request we
            # built; without it, a 400 means the mount refuses writes as configured (cas_required).
            if cas is not None:
                raise SecretsConflict(
                    "tenant secrets were changed by someone else; read them again", tenant=tenant
                ) from None
            raise _secrets_unavailable(exc, "writing tenant secrets", tenant) from None
        except VAULT_FAILURES as exc:
            raise _secrets_unavailable(exc, "writing tenant secrets", tenant) from None
        try:
            return _version(response["data"])
        except (KeyError, TypeError, ValueError):
            raise SecretsBackendUnavailable(
                "Vault answered the write with an unexpected body", tenant=tenant
            ) from None

    def presence(self, tenant: TenantName) -> SecretsPresence | None:
        try:
            stored = self._read(tenant)
        except SecretsMissing:
            return None
        secrets = stored.secrets
        return SecretsPresence(
            claude_oauth_token=bool(secrets.claude_oauth_token),
            nks_pat=bool(secrets.nks_pat),
            forges=tuple(forge.name for forge in secrets.forges),
            version=stored.version,
            updated_at=stored.created_time,
        )

    def delete(self, tenant: TenantName) -> None:
        """Offboard: every version and the metadata go. A missing tenant is not an error."""
        path = tenant_secret_path(tenant)
        try:
            self._kv.delete_metadata_and_all_versions(path, mount_point=self._mount)
        except VAULT_FAILURES as exc:
            raise _secrets_unavailable(exc, "deleting tenant secrets", tenant) from None

    def _read(self, tenant: TenantName) -> _StoredSecrets:
        path = tenant_secret_path(tenant)
        try:
            response = self._kv.read_secret_version(
                path, mount_point=self._mount, raise_on_deleted_version=True
            )
        except InvalidPath as exc:
            # A missing key answers 404 with an empty error list, a soft-deleted or destroyed
            # version 404 with none. A 404 that names an error is a missing mount or route:
            # misconfiguration, which must not pass for "not onboarded".
            if not exc.errors:
                raise SecretsMissing("tenant not onboarded", tenant=tenant) from None
            raise _secrets_unavailable(exc, "reading tenant secrets", tenant) from None
        except VAULT_FAILURES as exc:
            raise _secrets_unavailable(exc, "reading tenant secrets", tenant) from None
        # A stored value we cannot decode is reported as the backend failing, not as "missing":
        # the tenant is onboarded, so "not onboarded" would be a lie that fails the instance, and
        # nothing may proceed on partial secrets. Retrying is safe, and re-onboarding (a write)
        # repairs it. The message names no field value.
        try:
            metadata = response["data"]["metadata"]
            version = _version(metadata)
            secrets = _decode(response["data"]["data"], version)
            created_time = metadata["created_time"]
            if not isinstance(created_time, str):
                raise TypeError
        except (KeyError, TypeError, ValueError):
            raise SecretsBackendUnavailable(
                "the secrets stored for this tenant are malformed; onboard the tenant again",
                tenant=tenant,
            ) from None
        return _StoredSecrets(secrets, version, created_time)


def _secrets_unavailable(
    exc: Exception, doing: str, tenant: TenantName
) -> SecretsBackendUnavailable:
    return SecretsBackendUnavailable(
        f"Vault failed {doing} ({type(exc).__name__}); retry later", tenant=tenant
    )


def _version(metadata: dict[str, Any]) -> int:
    version = metadata["version"]
    if type(version) is not int or version < 1:
        raise ValueError
    return version


def _encode(secrets: TenantSecrets) -> dict[str, Any]:
    return {
        "claude_oauth_token": secrets.claude_oauth_token.reveal(),
        "nks_pat": secrets.nks_pat.reveal(),
        "forges": [
            {"name": forge.name, "host": forge.host, "token": forge.token.reveal()}
            for forge in secrets.forges
        ],
    }


def _decode(data: object, version: int) -> TenantSecrets:
    """The inverse of _encode, strict about types; raises TypeError without naming any value."""
    if not isinstance(data, dict):
        raise TypeError
    claude, nks, forges = data.get("claude_oauth_token"), data.get("nks_pat"), data.get("forges")
    if not (isinstance(claude, str) and isinstance(nks, str) and isinstance(forges, list)):
        raise TypeError
    decoded = []
    for forge in forges:
        if not isinstance(forge, dict):
            raise TypeError
        name, host, token = forge.get("name"), forge.get("host"), forge.get("token")
        if not (isinstance(name, str) and isinstance(host, str) and isinstance(token, str)):
            raise TypeError
        decoded.append(ForgeCredential(name=name, host=host, token=Secret(token)))
    return TenantSecrets(
        claude_oauth_token=Secret(claude),
        nks_pat=Secret(nks),
        forges=tuple(decoded),
        version=version,
    )
