"""The dark-agent simulator: HTTP listeners per simulated VM, one on each of its loopback addresses
(the NAT one and the VPC one).

It speaks dark-agent 0.19.0's guest API as far as it is known (docs/ARCHITECTURE.md#http-contracts),
quirks included (the init answer has no `nks_configured`), and injects the faults the control plane
must survive. A VM that is gone or refusing has no listener at all, so clients see a real connection
refused. This module keeps the guests' state and faults; the listeners themselves are in
sim.agent_http.

Request bodies carry tenant secrets: they are never logged, and no secret is kept beyond what the
guest itself would hold (its SSH identity); tokens are checked and dropped.
"""

import base64
import functools
import json
import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flask import Blueprint, request

from sim.agent_http import AGENT_VERSION, GuestServer, Reply, start_listener, stop_listener

log = logging.getLogger(__name__)

CLAUDE_TOKEN_PREFIX = "sk-ant-oat01-"
BUNDLE_FORMAT = "dark-agent-bundle/1"
FAULT_MODES = ("unavailable", "refuse", "garbage", "oversize", "error500", "hang")
CALLS = ("init", "claude", "export", "import", "health", "heal")
MAX_HANG_SECS = 30.0  # longer than any sane client timeout, short enough to not pile up threads
_ENDPOINTS = {
    ("GET", "/health"): "health",
    ("GET", "/heal"): "heal",
    ("POST", "/credentials/init"): "init",
    ("POST", "/credentials/claude"): "claude",
    ("POST", "/credentials/export"): "export",
    ("POST", "/credentials/import"): "import",
}
# Every field any endpoint answers with, each of the wrong type.
_GARBAGE = {
    "status": 7,
    "version": 0.19,
    "uptime_secs": "a while",
    "ssh_pubkey": 42,
    "forges": "github",
    "nks_configured": "yes",
    "claude_configured": "maybe",
    "bundle": ["not", "an", "object"],
}


class _Malformed(ValueError):
    """The request is bad: a 400 with this message (never containing input values)."""


@dataclass
class _Fault:
    mode: str
    until: float  # time.monotonic()
    released: threading.Event = field(default_factory=threading.Event)  # wakes hung requests
    expiry: threading.Timer | None = None

    def active(self) -> bool:
        return not self.released.is_set() and time.monotonic() < self.until

    def release(self) -> None:
        self.released.set()
        if self.expiry:
            self.expiry.cancel()


@dataclass
class _Identity:
    """What dark-agent keeps after init or import: an SSH key and the forge registrations."""

    key: Ed25519PrivateKey
    forges: list[dict]
    nks_configured: bool

    @property
    def ssh_pubkey(self) -> str:
        raw = self.key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
        return raw.decode() + " dark-agent"

    def bundle(self) -> dict:
        private = self.key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        return {
            "format": BUNDLE_FORMAT,
            "ssh_private_key": base64.b64encode(private).decode(),
            "ssh_pubkey": self.ssh_pubkey,
            "forges": self.forges,
            "nks_configured": self.nks_configured,
        }

    @classmethod
    def from_bundle(cls, bundle: object) -> "_Identity":
        if not isinstance(bundle, dict) or bundle.get("format") != BUNDLE_FORMAT:
            raise _Malformed("malformed bundle: unknown format")
        forges = bundle.get("forges")
        if not isinstance(forges, list) or not all(_is_registration(f) for f in forges):
            raise _Malformed("malformed bundle: bad forge registrations")
        try:
            # A missing or non-string key raises TypeError, caught below.
            raw = base64.b64decode(bundle.get("ssh_private_key"), validate=True)  # type: ignore[arg-type]
            key = Ed25519PrivateKey.from_private_bytes(raw)
        except (TypeError, ValueError):
            raise _Malformed("malformed bundle: bad identity") from None
        identity = cls(key, forges, bundle.get("nks_configured") is True)
        if identity.ssh_pubkey != bundle.get("ssh_pubkey"):
            raise _Malformed("malformed bundle: identity does not match its public key")
        return identity


def _is_registration(item: object) -> bool:
    return (
        isinstance(item, dict)
        and isinstance(item.get("name"), str)
        and isinstance(item.get("host"), str)
        and isinstance(item.get("registered"), bool)
    )


def _nonempty_str(value: object) -> bool:
    return isinstance(value, str) and value != ""


@dataclass
class _Guest:
    vm_id: str
    addresses: tuple[str, ...]
    boot_at: float  # time.monotonic()
    servers: list[GuestServer] = field(default_factory=list)
    identity: _Identity | None = None
    initialised: bool = False
    imported: bool = False
    claude_configured: bool = False

    def view(self) -> dict:
        return {
            "vm_id": self.vm_id,
            "addresses": list(self.addresses),
            "booted": time.monotonic() >= self.boot_at,
            "initialised": self.initialised,
            "imported": self.imported,
            "claude_configured": self.claude_configured,
            "ssh_pubkey": self.identity.ssh_pubkey if self.identity else None,
        }


class GuestFleet:
    """Every simulated VM's dark-agent, their faults and a log of the calls they answered."""

    def __init__(self, agent_port: int, boot_delay: float) -> None:
        self._port = agent_port
        self._boot_delay = boot_delay
        self._lock = threading.RLock()
        self._guests: dict[str, _Guest] = {}
        self._faults: dict[str | None, _Fault] = {}  # None: every VM
        self._counts: Counter[str] = Counter()
        self._calls: dict[str, list[dict]] = {}
        self._closed = False

    @property
    def agent_port(self) -> int:
        return self._port

    def vm_running(self, vm_id: str, addresses: tuple[str, ...]) -> None:
        """Serve the guest API at (address, agent_port) for each address; it answers 503 until it
        has booted."""
        with self._lock:
            old = self._guests.pop(vm_id, None)
            if old:
                self._stop_listener(old)
            guest = _Guest(vm_id, addresses, boot_at=time.monotonic() + self._boot_delay)
            self._guests[vm_id] = guest
            if self._fault_mode(vm_id) != "refuse":
                self._start_listener(guest)

    def vm_readdressed(self, vm_id: str, addresses: tuple[str, ...]) -> None:
        """The same guest (its identity kept) now serves at `addresses` only."""
        with self._lock:
            guest = self._guests.get(vm_id)
            if guest is None:
                return
            self._stop_listener(guest)
            guest.addresses = addresses
            if self._fault_mode(vm_id) != "refuse":
                self._start_listener(guest)

    def vm_gone(self, vm_id: str) -> None:
        with self._lock:
            guest = self._guests.pop(vm_id, None)
            if guest:
                self._stop_listener(guest)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            for fault in self._faults.values():
                fault.release()
            for guest in self._guests.values():
                self._stop_listener(guest)

    # --- listeners ----------------------------------------------------------------------------

    def _sync_listeners(self) -> None:
        """Open or close each VM's listener to match the `refuse` faults in force."""
        with self._lock:
            for guest in self._guests.values():
                refusing = self._closed or self._fault_mode(guest.vm_id) == "refuse"
                if refusing and guest.servers:
                    self._stop_listener(guest)
                elif not refusing and not guest.servers:
                    try:
                        self._start_listener(guest)
                    except OSError:
                        log.exception("guest %s: cannot listen on %s", guest.vm_id, guest.addresses)

    def _start_listener(self, guest: _Guest) -> None:
        try:
            for address in guest.addresses:
                answer = functools.partial(self.answer, guest.vm_id, address)
                guest.servers.append(start_listener(guest.vm_id, address, self._port, answer))
        except OSError:
            self._stop_listener(guest)
            raise

    def _stop_listener(self, guest: _Guest) -> None:
        servers, guest.servers = guest.servers, []
        for server in servers:
            stop_listener(server)

    # --- faults -------------------------------------------------------------------------------

    def _fault_mode(self, vm_id: str) -> str | None:
        fault = self._active_fault(vm_id)
        return fault.mode if fault else None

    def _active_fault(self, vm_id: str) -> _Fault | None:
        with self._lock:
            for scope in (vm_id, None):
                fault = self._faults.get(scope)
                if fault and fault.active():
                    return fault
        return None

    def set_fault(self, vm_id: str | None, mode: str, seconds: float) -> None:
        """Inject `mode` into one VM's guest (every guest when vm_id is None) for `seconds`."""
        fault = _Fault(mode, time.monotonic() + seconds)
        # A timer ends the fault on time: it reopens refusing listeners and wakes hung requests.
        fault.expiry = threading.Timer(seconds, self._expire, args=(fault,))
        fault.expiry.daemon = True
        with self._lock:
            replaced = self._faults.get(vm_id)
            if replaced:
                replaced.release()
            self._faults[vm_id] = fault
            fault.expiry.start()
            self._sync_listeners()

    def _expire(self, fault: _Fault) -> None:
        fault.release()
        self._sync_listeners()

    def clear_faults(self) -> None:
        with self._lock:
            for fault in self._faults.values():
                fault.release()
            self._faults.clear()
            self._sync_listeners()

    # --- the guest API ------------------------------------------------------------------------

    def answer(self, vm_id: str, address: str, method: str, path: str, body: bytes) -> Reply | None:
        """The reply to one guest API request received at `address`; None means drop the
        connection unanswered."""
        call = _ENDPOINTS.get((method, path.split("?", 1)[0]))
        fault = self._active_fault(vm_id)
        if fault and fault.mode in ("hang", "refuse"):
            if fault.mode == "hang":
                fault.released.wait(min(MAX_HANG_SECS, max(0.0, fault.until - time.monotonic())))
            return None
        with self._lock:
            guest = self._guests.get(vm_id)
            if guest is None:
                return None
            reply = self._reply(guest, call, fault, body)
            if call:
                self._counts[call] += 1
                self._calls.setdefault(vm_id, []).append(
                    {
                        "method": call,
                        "address": address,
                        "at": datetime.now(UTC).isoformat(),
                        "status": reply.status,
                    }
                )
            return reply

    def _reply(self, guest: _Guest, call: str | None, fault: _Fault | None, body: bytes) -> Reply:
        if fault and fault.mode == "unavailable":
            return Reply(503, {"error": "unavailable"})
        if fault and fault.mode == "error500":
            return Reply(500, {"error": "internal error"})
        if fault and fault.mode == "garbage":
            return Reply(200, _GARBAGE)
        if fault and fault.mode == "oversize":
            return Reply(200, oversize=True)
        if time.monotonic() < guest.boot_at:
            return Reply(503, {"error": "booting"})
        if call is None:
            return Reply(404, {"error": "not found"})
        try:
            payload = _json_body(body) if call in ("init", "claude", "import") else {}
            return getattr(self, f"_{call}")(guest, payload)
        except _Malformed as exc:
            return Reply(400, {"error": str(exc)})

    def _health(self, guest: _Guest, _: dict) -> Reply:
        uptime = int(time.monotonic() - guest.boot_at)
        return Reply(200, {"status": "ok", "version": AGENT_VERSION, "uptime_secs": uptime})

    def _heal(self, guest: _Guest, _: dict) -> Reply:
        checks = {
            "ssh_identity": "ok" if guest.identity else "missing",
            "forges": "ok" if guest.identity and guest.identity.forges else "not configured",
            "claude": "ok" if guest.claude_configured else "not configured",
        }
        return Reply(200, {"status": "healthy", "actions": [], "checks": checks})

    def _init(self, guest: _Guest, payload: dict) -> Reply:
        forges, nks_pat = payload.get("forges"), payload.get("nks_pat")
        if not isinstance(forges, list) or not all(
            isinstance(f, dict) and all(_nonempty_str(f.get(k)) for k in ("name", "host", "token"))
            for f in forges
        ):
            raise _Malformed("forges must be a list of {name, host, token}")
        if not isinstance(nks_pat, str):
            raise _Malformed("nks_pat must be a string")
        registrations = [{"name": f["name"], "host": f["host"], "registered": True} for f in forges]
        guest.identity = _Identity(Ed25519PrivateKey.generate(), registrations, bool(nks_pat))
        guest.initialised = True
        # 0.19.0 does not report nks_configured here.
        return Reply(200, {"ssh_pubkey": guest.identity.ssh_pubkey, "forges": registrations})

    def _claude(self, guest: _Guest, payload: dict) -> Reply:
        token = payload.get("oauth_token")
        if not isinstance(token, str) or not token.startswith(CLAUDE_TOKEN_PREFIX):
            raise _Malformed("claude token rejected: not a Claude OAuth token")
        if guest.identity is None:
            return Reply(409, {"error": "not initialised"})
        guest.claude_configured = True
        return Reply(200, {"claude_configured": True})

    def _export(self, guest: _Guest, _: dict) -> Reply:
        if guest.identity is None:
            return Reply(409, {"error": "not initialised"})
        return Reply(200, {"bundle": guest.identity.bundle()})

    def _import(self, guest: _Guest, payload: dict) -> Reply:
        guest.identity = _Identity.from_bundle(payload.get("bundle"))
        guest.imported = True
        return Reply(
            200, {"ssh_pubkey": guest.identity.ssh_pubkey, "forges": guest.identity.forges}
        )

    # --- admin --------------------------------------------------------------------------------

    def blueprint(self) -> Blueprint:
        """Admin routes, mounted by the simulator's admin app under /guests."""
        bp = Blueprint("guests", __name__)

        @bp.get("/config")
        def get_config():
            return {"boot_delay": self._boot_delay}

        @bp.post("/config")
        def set_config():
            delay = (request.get_json(silent=True) or {}).get("boot_delay")
            if isinstance(delay, bool) or not isinstance(delay, int | float) or delay < 0:
                return _admin_error("boot_delay must be a number of seconds, zero or more")
            self._boot_delay = float(delay)
            return {"boot_delay": self._boot_delay}

        @bp.post("/faults")
        def set_fault():
            spec = request.get_json(silent=True) or {}
            vm_id, mode, seconds = spec.get("vm_id"), spec.get("mode"), spec.get("seconds")
            if mode not in FAULT_MODES:
                return _admin_error(f"mode must be one of {', '.join(FAULT_MODES)}")
            if isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds <= 0:
                return _admin_error("seconds must be a positive number")
            with self._lock:
                if vm_id is not None and vm_id not in self._guests:
                    return _admin_error(f"no guest on VM {vm_id}", 404)
                self.set_fault(vm_id, mode, float(seconds))
            return {"vm_id": vm_id, "mode": mode, "seconds": seconds}

        @bp.delete("/faults")
        def clear_faults():
            self.clear_faults()
            return "", 204

        @bp.get("/calls")
        def calls():
            with self._lock:
                counts = {name: self._counts[name] for name in CALLS}
                return {"counts": counts, "by_vm": {k: list(v) for k, v in self._calls.items()}}

        @bp.get("/vms/<vm_id>")
        def vm(vm_id: str):
            with self._lock:
                guest = self._guests.get(vm_id)
                return guest.view() if guest else _admin_error(f"no guest on VM {vm_id}", 404)

        return bp


def _admin_error(message: str, status: int = 400):
    code = "not_found" if status == 404 else "invalid"
    return {"error": {"code": code, "message": message}}, status


def _json_body(body: bytes) -> dict:
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError):
        raise _Malformed("malformed JSON") from None
    if not isinstance(payload, dict):
        raise _Malformed("expected a JSON object")
    return payload
