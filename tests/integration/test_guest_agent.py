"""HttpGuestAgent against the dark-agent simulator in the real `python -m sim` process."""

import json
import logging
import secrets
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from shared.adapters.guest import HttpGuestAgent
from shared.domain.errors import (
    GuestCredentialsError,
    GuestUnavailable,
    GuestUnreachable,
    GuestValidation,
)
from shared.domain.guest import ForgeRegistration, GuestHealth
from shared.domain.secrets import Bundle, ForgeCredential, Secret, TenantSecrets
from shared.redaction import MAX_MESSAGE, mask_message
from tests.support.processes import wait_until

TIMEOUT = 2.0


def tenant_secrets(claude_token: str | None = None) -> TenantSecrets:
    return TenantSecrets(
        claude_oauth_token=Secret(claude_token or "sk-ant-oat01-" + secrets.token_urlsafe(32)),
        nks_pat=Secret("nks-" + secrets.token_urlsafe(24)),
        forges=(ForgeCredential("github", "github.com", Secret("ghp_" + secrets.token_hex(18))),),
    )


def secret_values(tenant: TenantSecrets) -> list[str]:
    return [
        tenant.claude_oauth_token.reveal(),
        tenant.nks_pat.reveal(),
        *(f.token.reveal() for f in tenant.forges),
    ]


@pytest.fixture
def agent(simulator):
    agent = HttpGuestAgent(
        port=simulator.info["agent_port"], timeout=TIMEOUT, max_response_bytes=1_048_576
    )
    yield agent
    agent.close()


@pytest.fixture(autouse=True)
def guest_sim(simulator):
    """Guests boot at once unless a test says otherwise; no fault outlives its test."""
    previous = simulator.admin("GET", "/guests/config")["boot_delay"]
    simulator.admin("POST", "/guests/config", json={"boot_delay": 0})
    yield
    simulator.admin("DELETE", "/guests/faults")
    simulator.admin("POST", "/guests/config", json={"boot_delay": previous})


@pytest.fixture
def new_vm(simulator):
    """Creates VMs with a guest; deletes whichever of them the test left behind."""
    created: list[str] = []

    def create() -> dict:
        vm = simulator.admin(
            "POST",
            "/cloud/vms",
            json={
                "folder_id": f"guest-tests-{uuid.uuid4().hex[:8]}",
                "name": f"guest-test-{uuid.uuid4().hex[:12]}",
                "labels": {},
                "guest": True,
            },
        )
        created.append(vm["id"])
        return vm

    yield create
    for vm_id in created:
        requests.delete(f"{simulator.admin_url}/cloud/vms/{vm_id}", timeout=10)


@pytest.fixture
def booted_vm(new_vm, agent):
    vm = new_vm()
    wait_until(lambda: agent.health(vm["address"]), 5, what="the guest to boot")
    return vm


def set_fault(simulator, vm: dict, mode: str, seconds: float = 30) -> None:
    simulator.admin(
        "POST", "/guests/faults", json={"vm_id": vm["id"], "mode": mode, "seconds": seconds}
    )


def calls_on(simulator, vm: dict) -> list[str]:
    """The credential calls the VM's guest answered with success, in order."""
    by_vm = simulator.admin("GET", "/guests/calls")["by_vm"].get(vm["id"], [])
    return [c["method"] for c in by_vm if c["status"] == 200 and c["method"] not in ("health",)]


def test_a_booted_guest_reports_its_health_and_heals(agent, booted_vm):
    health = agent.health(booted_vm["address"], timeout=0.5)
    assert isinstance(health, GuestHealth)
    assert health.status == "ok"
    assert health.version == "0.19.0"
    assert isinstance(health.uptime_secs, float)
    assert agent.heal(booted_vm["address"])["status"] == "healthy"


def test_a_booting_guest_is_unavailable(simulator, agent, new_vm):
    simulator.admin("POST", "/guests/config", json={"boot_delay": 60})
    vm = new_vm()
    with pytest.raises(GuestUnavailable, match="booting"):
        agent.health(vm["address"])
    with pytest.raises(GuestUnavailable):
        agent.init(vm["address"], tenant_secrets())
    assert not simulator.admin("GET", f"/guests/vms/{vm['id']}")["initialised"]


def test_init_claude_export_then_import_gives_a_second_vm_the_same_identity(
    simulator, agent, booted_vm, new_vm
):
    tenant = tenant_secrets()
    first = agent.init(booted_vm["address"], tenant)
    agent.claude(booted_vm["address"], tenant)
    bundle = agent.export(booted_vm["address"])

    second_vm = new_vm()
    wait_until(lambda: agent.health(second_vm["address"]), 5, what="the second guest to boot")
    second = agent.import_bundle(second_vm["address"], bundle)
    agent.claude(second_vm["address"], tenant)

    assert isinstance(bundle, Bundle)
    assert first.ssh_pubkey.startswith("ssh-ed25519 ")
    assert second.ssh_pubkey == first.ssh_pubkey
    assert first.forges == second.forges == (ForgeRegistration("github", "github.com", True),)
    assert calls_on(simulator, booted_vm) == ["init", "claude", "export"]
    assert calls_on(simulator, second_vm) == ["import", "claude"]
    state = simulator.admin("GET", f"/guests/vms/{second_vm['id']}")
    assert state["imported"] and state["claude_configured"] and not state["initialised"]
    assert state["ssh_pubkey"] == first.ssh_pubkey


def test_a_missing_nks_configured_defaults_to_false(simulator, agent, booted_vm):
    tenant = tenant_secrets()
    raw = requests.post(
        f"http://{booted_vm['address']}:{simulator.info['agent_port']}/credentials/init",
        json={"forges": [], "nks_pat": tenant.nks_pat.reveal()},
        timeout=TIMEOUT,
    ).json()
    assert "nks_configured" not in raw  # dark-agent 0.19.0
    assert agent.init(booted_vm["address"], tenant).nks_configured is False


def test_a_bad_claude_token_is_a_validation_error_with_the_guests_message(agent, booted_vm):
    tenant = tenant_secrets(claude_token="sk-ant-api03-" + secrets.token_urlsafe(32))
    agent.init(booted_vm["address"], tenant)
    with pytest.raises(GuestValidation) as caught:
        agent.claude(booted_vm["address"], tenant)
    assert str(caught.value) == "claude token rejected: not a Claude OAuth token"


def test_claude_before_init_is_a_credentials_error(agent, booted_vm):
    with pytest.raises(GuestCredentialsError, match="409"):
        agent.claude(booted_vm["address"], tenant_secrets())


def test_a_guest_message_is_masked_and_bounded():
    message = mask_message(
        "token sk-ant-api03-abcdef rejected; also ghp_0123 and hunter22\n"
        + "x" * 40
        + " end" * 200,
        secrets=["hunter22"],
    )
    assert "sk-ant" not in message and "ghp_" not in message and "hunter22" not in message
    assert "x" * 40 not in message and "\n" not in message
    assert message.startswith("token *** rejected; also *** and ***")
    assert len(message) <= MAX_MESSAGE


def test_an_import_error_quoting_the_bundle_is_masked_at_the_edge():
    """A guest (not the simulator, which never quotes input) whose 400 repeats the bundle."""
    private_key = "key part " + secrets.token_hex(8)  # spaces: no token-like run to catch

    class Echo(BaseHTTPRequestHandler):
        def do_POST(self):
            sent = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            quoted = sent["bundle"]["ssh_private_key"]
            body = json.dumps({"error": f"bundle rejected: {quoted!r} is malformed"}).encode()
            self.send_response(400)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    agent = HttpGuestAgent(
        port=server.server_address[1], timeout=TIMEOUT, max_response_bytes=1_048_576
    )
    try:
        with pytest.raises(GuestValidation) as caught:
            agent.import_bundle("127.0.0.1", Bundle({"ssh_private_key": private_key}))
    finally:
        agent.close()
        server.shutdown()
        server.server_close()
    assert str(caught.value) == "bundle rejected: '***' is malformed"


def test_a_deleted_vm_is_unreachable(simulator, agent, booted_vm):
    simulator.admin("DELETE", f"/cloud/vms/{booted_vm['id']}")
    with pytest.raises(GuestUnreachable, match="connection refused"):
        agent.health(booted_vm["address"])


def test_a_refusing_guest_is_unreachable_until_the_fault_ends(simulator, agent, booted_vm):
    set_fault(simulator, booted_vm, "refuse", seconds=1)
    with pytest.raises(GuestUnreachable, match="connection refused"):
        agent.health(booted_vm["address"])
    assert wait_until(lambda: agent.health(booted_vm["address"]), 5, what="the listener to reopen")


def test_an_unavailable_guest_is_unavailable(simulator, agent, booted_vm):
    set_fault(simulator, booted_vm, "unavailable")
    with pytest.raises(GuestUnavailable):
        agent.export(booted_vm["address"])


def test_an_oversize_body_is_a_credentials_error(simulator, agent, booted_vm):
    set_fault(simulator, booted_vm, "oversize")
    with pytest.raises(GuestCredentialsError, match="over 1048576 bytes"):
        agent.health(booted_vm["address"])
    with pytest.raises(GuestCredentialsError, match="over 1048576 bytes"):
        agent.init(booted_vm["address"], tenant_secrets())
    simulator.admin("DELETE", "/guests/faults")
    assert agent.health(booted_vm["address"]).status == "ok"


def test_wrong_types_are_a_credentials_error(simulator, agent, booted_vm):
    tenant = tenant_secrets()
    address = booted_vm["address"]
    set_fault(simulator, booted_vm, "garbage")
    calls = [
        lambda: agent.health(address),
        lambda: agent.init(address, tenant),
        lambda: agent.claude(address, tenant),
        lambda: agent.export(address),
        lambda: agent.import_bundle(address, Bundle({"format": "x"})),
    ]
    for call in calls:
        with pytest.raises(GuestCredentialsError, match="is not"):
            call()


def test_a_server_error_is_a_credentials_error(simulator, agent, booted_vm):
    set_fault(simulator, booted_vm, "error500")
    with pytest.raises(GuestCredentialsError, match="HTTP 500"):
        agent.init(booted_vm["address"], tenant_secrets())


def test_a_hanging_guest_is_unreachable_within_the_timeout(simulator, agent, booted_vm):
    set_fault(simulator, booted_vm, "hang")
    started = time.monotonic()
    with pytest.raises(GuestUnreachable, match="timed out"):
        agent.health(booted_vm["address"], timeout=0.5)
    assert time.monotonic() - started < 0.5 + 1.0
    started = time.monotonic()
    with pytest.raises(GuestUnreachable, match="timed out"):
        agent.export(booted_vm["address"])
    assert time.monotonic() - started < TIMEOUT + 1.0


def test_secrets_never_reach_logs_reprs_or_errors(caplog, agent, booted_vm, new_vm):
    caplog.set_level(logging.DEBUG)
    tenant = tenant_secrets()
    identity = agent.init(booted_vm["address"], tenant)
    agent.claude(booted_vm["address"], tenant)
    bundle = agent.export(booted_vm["address"])
    second_vm = new_vm()
    wait_until(lambda: agent.health(second_vm["address"]), 5, what="the second guest to boot")
    imported = agent.import_bundle(second_vm["address"], bundle)
    rejected = tenant_secrets(claude_token="sk-ant-api03-" + secrets.token_urlsafe(32))
    with pytest.raises(GuestValidation) as caught:
        agent.claude(second_vm["address"], rejected)

    assert "/credentials/import" in caplog.text  # the calls were logged, by path
    shown = " ".join(
        [caplog.text, repr(identity), repr(imported), repr(bundle), repr(tenant), str(caught.value)]
    )
    leaked = [*secret_values(tenant), *secret_values(rejected), bundle.reveal()["ssh_private_key"]]
    # Counted, not listed: a failing run must not print the values it caught.
    assert sum(value in shown for value in leaked) == 0
