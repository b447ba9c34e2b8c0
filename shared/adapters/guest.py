"""HttpGuestAgent: dark-agent's HTTP API on each VM, over requests (docs/ARCHITECTURE.md#pipeline
and docs/ARCHITECTURE.md#http-contracts).

Every failure leaves this module as a GuestError: transport error or timeout → GuestUnreachable,
503 → GuestUnavailable, 400 → GuestValidation (the guest's own message, masked and bounded by
`shared.redaction.mask_message`), anything else → GuestCredentialsError. Bodies are read with a
size bound and decoded liberally (unknown fields ignored, optional fields defaulted) but strictly
typed. Request and response bodies of the credential calls carry secrets: only the method, path and
status are ever logged.
"""

import json
import logging
import re
import time
from collections.abc import Iterable
from typing import Any, TypeVar, overload

import requests

from shared.domain.errors import (
    GuestCredentialsError,
    GuestUnavailable,
    GuestUnreachable,
    GuestValidation,
)
from shared.domain.guest import ForgeRegistration, GuestHealth, GuestIdentity
from shared.domain.secrets import Bundle, TenantSecrets
from shared.redaction import mask_message
from shared.settings import Settings

log = logging.getLogger(__name__)

_CHUNK_BYTES = 64 * 1024
_MISSING = object()

# A decoded JSON object, as the guest sends it.
JsonObject = dict[str, Any]
_T = TypeVar("_T")
_D = TypeVar("_D")

_SSH_KEY_TYPE = re.compile(r"(?:ssh-|ecdsa-|sk-)[a-z0-9@.\-]+\Z")


class _TooLarge(Exception):
    pass


class HttpGuestAgent:
    """Implements shared.ports.GuestAgent against `http://<address>:<port>`."""

    def __init__(
        self,
        *,
        port: int,
        timeout: float,
        max_response_bytes: int,
        session: requests.Session | None = None,
    ) -> None:
        self._port = port
        self._timeout = timeout
        self._max_bytes = max_response_bytes
        self._session = session or requests.Session()
        # The guest is addressed directly by its IP: proxy variables and ~/.netrc from the
        # environment must not reroute or decorate requests that carry tenant secrets.
        self._session.trust_env = False
        self._session.headers.update({"Accept": "application/json"})

    @classmethod
    def from_settings(cls, settings: Settings) -> "HttpGuestAgent":
        return cls(
            port=settings.agent_port,
            timeout=settings.guest_timeout,
            max_response_bytes=settings.guest_max_response_bytes,
        )

    def close(self) -> None:
        self._session.close()

    # --- the guest API ----------------------------------------------------------------------

    def health(self, address: str, *, timeout: float | None = None) -> GuestHealth:
        body, what = self._call(address, "GET", "/health", timeout=timeout)
        uptime = _field(body, "uptime_secs", (int, float), what, default=None)
        try:
            uptime = None if uptime is None else float(uptime)
        except OverflowError:  # an integer too large for a float is valid JSON
            raise GuestCredentialsError(f"{what}: 'uptime_secs' is out of range") from None
        return GuestHealth(
            status=_field(body, "status", str, what),
            version=_field(body, "version", str, what, default=None),
            uptime_secs=uptime,
        )

    def heal(self, address: str) -> JsonObject:
        body, _ = self._call(address, "GET", "/heal")
        return body

    def init(self, address: str, secrets: TenantSecrets) -> GuestIdentity:
        payload = {
            "forges": [
                {"name": f.name, "host": f.host, "token": f.token.reveal()} for f in secrets.forges
            ],
            "nks_pat": secrets.nks_pat.reveal(),
        }
        known = [f.token.reveal() for f in secrets.forges] + [secrets.nks_pat.reveal()]
        body, what = self._call(address, "POST", "/credentials/init", payload, secrets=known)
        return _identity(body, what)

    def claude(self, address: str, secrets: TenantSecrets) -> None:
        token = secrets.claude_oauth_token.reveal()
        body, what = self._call(
            address, "POST", "/credentials/claude", {"oauth_token": token}, secrets=[token]
        )
        # A 200 is success; a guest that says outright it did not take the token is not.
        if _field(body, "claude_configured", bool, what, default=True) is False:
            raise GuestCredentialsError(f"{what}: the guest did not configure the Claude token")

    def export(self, address: str) -> Bundle:
        body, what = self._call(address, "POST", "/credentials/export", {})
        return Bundle(_field(body, "bundle", dict, what))

    def import_bundle(self, address: str, bundle: Bundle) -> GuestIdentity:
        body, what = self._call(
            address,
            "POST",
            "/credentials/import",
            {"bundle": bundle.reveal()},
            secrets=_strings(bundle.reveal()),
        )
        return _identity(body, what)

    # --- transport --------------------------------------------------------------------------

    def _call(
        self,
        address: str,
        method: str,
        path: str,
        payload: JsonObject | None = None,
        *,
        timeout: float | None = None,
        secrets: Iterable[str] = (),
    ) -> tuple[JsonObject, str]:
        """Send one request; returns the decoded JSON object and a label for error messages."""
        what = f"guest {address}: {method} {path}"
        timeout = timeout or self._timeout
        host = f"[{address}]" if ":" in address else address
        started = time.monotonic()
        deadline = started + timeout
        try:
            resp = self._session.request(
                method,
                f"http://{host}:{self._port}{path}",
                json=payload,
                timeout=timeout,
                allow_redirects=False,
                stream=True,
            )
        # `from None` throughout: requests exceptions hold the prepared request, body and all.
        except requests.Timeout:
            raise GuestUnreachable(f"{what}: timed out after {timeout:g} s") from None
        except requests.RequestException as exc:
            raise GuestUnreachable(f"{what}: {_transport_reason(exc)}") from None
        with resp:
            status = resp.status_code
            log.debug("%s -> %s in %.3f s", what, status, time.monotonic() - started)
            if status == 503:
                reason = _guest_message(self._read_quietly(resp, deadline), secrets)
                raise GuestUnavailable(f"{what}: not ready ({reason or '503'})")
            if status == 400:
                reason = _guest_message(self._read_quietly(resp, deadline), secrets)
                raise GuestValidation(reason or f"{what}: rejected the request", path=path)
            if not 200 <= status < 300:
                raise GuestCredentialsError(f"{what}: unexpected HTTP {status}", status=status)
            try:
                raw = self._read(resp, deadline)
            except _TooLarge:
                raise GuestCredentialsError(
                    f"{what}: response over {self._max_bytes} bytes"
                ) from None
            except requests.RequestException as exc:
                raise GuestUnreachable(f"{what}: {_transport_reason(exc)}") from None
        return _json_object(raw, what), what

    def _read(self, resp: requests.Response, deadline: float) -> bytes:
        """The body, at most max_response_bytes of it after decoding, by `deadline`.

        Content-Length is only a hint: a peer may omit it or send more than it announced.
        """
        announced = resp.headers.get("Content-Length", "")
        if announced.isdigit() and int(announced) > self._max_bytes:
            raise _TooLarge
        chunks: list[bytes] = []
        size = 0
        for chunk in resp.iter_content(_CHUNK_BYTES):
            size += len(chunk)
            if size > self._max_bytes:
                raise _TooLarge
            # The per-read timeout alone would let a peer drip bytes forever.
            if time.monotonic() > deadline:
                raise requests.Timeout("response body not read in time")
            chunks.append(chunk)
        return b"".join(chunks)

    def _read_quietly(self, resp: requests.Response, deadline: float) -> bytes:
        """An error response's body for its message; the status alone decides the outcome."""
        try:
            return self._read(resp, deadline)
        except (_TooLarge, requests.RequestException):
            return b""


# --- decoding ---------------------------------------------------------------------------------


def _json_object(raw: bytes, what: str) -> JsonObject:
    try:
        body = json.loads(raw)
    # RecursionError: deeply nested arrays are valid JSON that exhausts the decoder.
    except (ValueError, RecursionError):
        raise GuestCredentialsError(f"{what}: response is not JSON") from None
    if not isinstance(body, dict):
        raise GuestCredentialsError(f"{what}: response is not a JSON object")
    return body


@overload
def _field(body: JsonObject, key: str, kind: type[_T] | tuple[type[_T], ...], what: str) -> _T: ...


@overload
def _field(
    body: JsonObject, key: str, kind: type[_T] | tuple[type[_T], ...], what: str, default: _D
) -> _T | _D: ...


def _field(
    body: JsonObject,
    key: str,
    kind: type[Any] | tuple[type[Any], ...],
    what: str,
    default: Any = _MISSING,
) -> Any:
    """`body[key]` if it has type `kind`; `default` when absent or null; else the error."""
    value = body.get(key)
    if value is None:
        if default is _MISSING:
            raise GuestCredentialsError(f"{what}: response lacks {key!r}")
        return default
    kinds = kind if isinstance(kind, tuple) else (kind,)
    # bool is an int to isinstance, never to us.
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        expected = " or ".join(k.__name__ for k in kinds)
        raise GuestCredentialsError(f"{what}: {key!r} is not {expected}")
    return value


def _identity(body: JsonObject, what: str) -> GuestIdentity:
    pubkey = _field(body, "ssh_pubkey", str, what)
    parts = pubkey.split()
    if len(parts) < 2 or "\n" in pubkey.strip() or not _SSH_KEY_TYPE.match(parts[0]):
        raise GuestCredentialsError(f"{what}: 'ssh_pubkey' is not an SSH public key")
    forges = _field(body, "forges", list, what, default=[])
    return GuestIdentity(
        ssh_pubkey=pubkey.strip(),
        forges=tuple(_forge(item, what) for item in forges),
        nks_configured=_field(body, "nks_configured", bool, what, default=False),
    )


def _forge(item: object, what: str) -> ForgeRegistration:
    if not isinstance(item, dict):
        raise GuestCredentialsError(f"{what}: a 'forges' entry is not an object")
    return ForgeRegistration(
        name=_field(item, "name", str, what),
        host=_field(item, "host", str, what, default=None),
        registered=_field(item, "registered", bool, what, default=False),
    )


def _strings(value: Any) -> list[str]:
    """Every string value in a JSON value (not the keys): what a guest's error may not quote."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for item in value for s in _strings(item)]
    return []


def _guest_message(raw: bytes, secrets: Iterable[str]) -> str:
    """The guest's own error text (`error` or `message`), masked and bounded; "" if none."""
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        return ""
    if not isinstance(body, dict):
        return ""
    message = body.get("error") or body.get("message")
    if isinstance(message, dict):
        message = message.get("message")
    if not isinstance(message, str):
        return ""
    return mask_message(message, secrets)


def _transport_reason(exc: requests.RequestException) -> str:
    """A short, body-free description of a transport failure."""
    if isinstance(exc, requests.Timeout):
        return "timed out"
    if isinstance(exc, requests.ConnectionError):
        text = str(exc)
        if "Connection refused" in text:
            return "connection refused"
        if "RemoteDisconnected" in text or "Connection aborted" in text:
            return "connection closed without a response"
        return "connection failed"
    return f"transport error ({type(exc).__name__})"
