"""The Vault transit key that wraps bundle data keys, through hvac (failure translation: see
`vault_client`)."""

import base64
import binascii
from collections.abc import Callable
from typing import Any

import hvac
from hvac.exceptions import InvalidPath

from shared.adapters.vault_client import VAULT_FAILURES
from shared.domain.errors import BundleBackendUnavailable

BUNDLE_KEY_TYPE = "aes256-gcm96"
DATA_KEY_BYTES = 32


class TransitKeys:
    """The transit key that wraps per-bundle data keys. It never sees a bundle.

    Every failure, including Vault refusing to decrypt, is BundleBackendUnavailable: a caller must
    never mistake it for "no bundle".
    """

    def __init__(self, client: hvac.Client, mount: str = "transit", *, key_name: str) -> None:
        self._transit = client.secrets.transit
        self._mount = mount
        self._key = key_name

    def data_key(self) -> tuple[bytes, str]:
        """A fresh 256-bit data key: (plaintext, wrapped under the key's latest version)."""
        data = self._call("generating a data key", self._transit.generate_data_key, "plaintext")
        try:
            plaintext = base64.b64decode(data["plaintext"], validate=True)
            wrapped = data["ciphertext"]
        except (KeyError, TypeError, binascii.Error):
            raise self._unexpected("generating a data key") from None
        if len(plaintext) != DATA_KEY_BYTES or not isinstance(wrapped, str):
            raise self._unexpected("generating a data key")
        return plaintext, wrapped

    def unwrap(self, wrapped: str) -> bytes:
        data = self._call("unwrapping a data key", self._transit.decrypt_data, wrapped)
        try:
            return base64.b64decode(data["plaintext"], validate=True)
        except (KeyError, TypeError, binascii.Error):
            raise self._unexpected("unwrapping a data key") from None

    def rewrap(self, wrapped: str) -> str:
        """The same data key wrapped under the latest key version; Vault never reveals it."""
        data = self._call("rewrapping a data key", self._transit.rewrap_data, wrapped)
        try:
            rewrapped = data["ciphertext"]
        except (KeyError, TypeError):
            raise self._unexpected("rewrapping a data key") from None
        if not isinstance(rewrapped, str):
            raise self._unexpected("rewrapping a data key")
        return rewrapped

    def rotate(self) -> None:
        self._call("rotating", self._transit.rotate_key)

    def latest_version(self) -> int:
        data = self._call("reading", self._transit.read_key)
        version = data.get("latest_version") if isinstance(data, dict) else None
        if type(version) is not int:
            raise self._unexpected("reading")
        return version

    def set_min_decryption_version(self, version: int) -> None:
        """Wrapped keys older than `version` stop decrypting (and rewrapping) from now on."""
        self._call(
            "raising the minimum decryption version",
            self._transit.update_key_configuration,
            min_decryption_version=version,
        )

    def ensure_key(self) -> None:
        """Create the key if it is missing; for set-up scripts.

        Created explicitly because transit's encrypt endpoint would upsert a mistyped key name.
        """
        try:
            self._transit.read_key(name=self._key, mount_point=self._mount)
        except InvalidPath as exc:
            # As in KV: an empty error list is a missing key, a named error a missing mount.
            if exc.errors:
                raise self._failed(exc, "reading") from None
            self._call("creating", self._transit.create_key, key_type=BUNDLE_KEY_TYPE)
        except VAULT_FAILURES as exc:
            raise self._failed(exc, "reading") from None

    def _call(
        self, doing: str, method: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> dict[str, Any]:
        """Call a transit endpoint on our key; returns the response's `data` (empty when none)."""
        try:
            response = method(self._key, *args, mount_point=self._mount, **kwargs)
        except VAULT_FAILURES as exc:
            raise self._failed(exc, doing) from None
        # Endpoints answering 204 give a bare requests.Response, not JSON.
        data: dict[str, Any] = response.get("data", {}) if isinstance(response, dict) else {}
        return data

    def _failed(self, exc: Exception, doing: str) -> BundleBackendUnavailable:
        return BundleBackendUnavailable(
            f"Vault transit failed {doing} with key {self._key!r} ({type(exc).__name__})"
        )

    def _unexpected(self, doing: str) -> BundleBackendUnavailable:
        return BundleBackendUnavailable(
            f"Vault transit answered {doing} with key {self._key!r} with an unexpected body"
        )
