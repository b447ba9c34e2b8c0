"""The hvac client both Vault adapters share (KV in `vault_kv`, transit in `vault_transit`).

Every SDK or transport failure is translated in those adapters into a domain error whose message
names the operation and the exception class only. Never `str(exc)`: it carries server text and
URLs. Chaining is suppressed (`from None`) because requests' exceptions keep the prepared request,
whose body may hold the very secrets being written, and error reporters walk `__cause__`.
"""

import hvac
import requests
from hvac.exceptions import VaultError

from shared.settings import Settings, SettingsError

# requests' transport errors (refused, reset, timeout) are not VaultErrors; both mean "try later".
VAULT_FAILURES: tuple[type[Exception], ...] = (VaultError, requests.RequestException)


def vault_client(settings: Settings) -> hvac.Client:
    """An hvac client configured from settings alone.

    The token is always passed explicitly: given None, hvac would silently fall back to
    $VAULT_TOKEN or ~/.vault-token, i.e. to whatever identity the process happens to inherit.
    """
    if not settings.vault_token:
        raise SettingsError("VAULT_TOKEN: required to talk to Vault")
    return hvac.Client(
        url=settings.vault_addr,
        token=settings.vault_token,
        namespace=settings.vault_namespace,
        timeout=settings.vault_timeout,
    )
