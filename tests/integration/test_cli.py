"""The `dark` CLI (cli/) driven by click's CliRunner against a real gunicorn gateway: what it
stores at login, what it prints for people and for scripts, how it fails (the API's message, a
non-zero exit), and that it never prints a token unless that is the point (an invite link)."""

import json
import os
import secrets
import stat
import threading
import time

import pytest
from click.testing import CliRunner

from cli.main import cli
from shared.adapters.registry import PostgresFleetRegistry
from shared.domain.lifecycle import Status
from shared.domain.tenants import TenantName
from tests.support.gateway import running_gateway

PREFIX = "cli-"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, migrated_database_url, redis_url):
    with running_gateway(
        tmp_path_factory.mktemp("gateway"), migrated_database_url, redis_url
    ) as gateway:
        yield gateway


@pytest.fixture(scope="module")
def registry(pg_pool):
    yield PostgresFleetRegistry(pg_pool)
    with pg_pool.connection() as conn:
        conn.execute("DELETE FROM instances WHERE tenant LIKE %s", (PREFIX + "%",))
        conn.execute("DELETE FROM invites WHERE tenant LIKE %s", (PREFIX + "%",))


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    """A config directory of the test's own, no DARK_* of the caller's, and a directory with no
    `make run` in it."""
    for name in ("DARK_URL", "DARK_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    return tmp_path


@pytest.fixture
def logged_in(gateway, monkeypatch):
    monkeypatch.setenv("DARK_URL", gateway.url)
    monkeypatch.setenv("DARK_TOKEN", gateway.token)
    return gateway


def dark(*args: str, input: str | None = None):
    return CliRunner().invoke(cli, list(args), input=input, catch_exceptions=False)


def tenant() -> str:
    return PREFIX + secrets.token_hex(4)


# --- login -----------------------------------------------------------------------------------


def test_login_checks_the_token_and_stores_url_and_token_0600_without_printing_it(gateway, home):
    result = dark("login", "--url", gateway.url, "--token-stdin", input=gateway.token + "\n")
    assert result.exit_code == 0, result.output
    assert gateway.token not in result.output
    path = home / "config" / "dark" / "config.json"
    assert json.loads(path.read_text()) == {"url": gateway.url, "token": gateway.token}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["config.json"]  # no temporary left
    # The stored login is what later commands use.
    listed = dark("ls", "--json")
    assert listed.exit_code == 0, listed.output
    assert "items" in json.loads(listed.output)


def test_login_with_a_bad_token_exits_non_zero_with_the_apis_message_and_stores_nothing(
    gateway, home
):
    result = dark("login", "--url", gateway.url, "--token-stdin", input="op-not-the-token-at-all\n")
    assert result.exit_code == 1
    assert "not a valid" in result.output or "token" in result.output.lower(), result.output
    assert "HTTP 401" in result.output
    assert not (home / "config" / "dark" / "config.json").exists()


def test_login_in_a_checkout_running_make_run_finds_its_gateway_and_token(gateway, home):
    checkout = home / "checkout"
    (checkout / ".run").mkdir(parents=True)
    (checkout / ".run" / "tokens.json").write_text(json.dumps({"DARK_API_TOKENS": gateway.token}))
    (checkout / ".run" / "endpoints.json").write_text(json.dumps({"gateway": gateway.url}))
    (checkout / "services").mkdir()
    os.chdir(checkout / "services")  # a subdirectory of the checkout will do
    result = dark("login", "--json")
    assert result.exit_code == 0, result.output
    answer = json.loads(result.output)
    assert answer["url"] == gateway.url and answer["token_from"].endswith(".run/tokens.json")
    assert gateway.token not in result.output


def test_a_command_before_login_says_how_to_log_in(home):
    result = dark("ls")
    assert result.exit_code == 1 and "dark login" in result.output


def test_an_unreachable_gateway_is_a_clear_failure(monkeypatch):
    monkeypatch.setenv("DARK_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("DARK_TOKEN", "op-" + "x" * 32)
    result = dark("ls")
    assert result.exit_code == 1 and "cannot reach the gateway" in result.output
    assert "x" * 32 not in result.output


# --- instances -------------------------------------------------------------------------------


def test_ls_prints_a_table_for_people_and_json_for_scripts(logged_in, registry):
    name = tenant()
    instance, _ = registry.create(TenantName(name))
    table = dark("ls", "--tenant", name)
    assert table.exit_code == 0, table.output
    header, row = table.output.splitlines()
    assert header.split()[:3] == ["ID", "TENANT", "STATUS"]
    assert row.split()[:3] == [str(instance.id), name, "pending"]
    as_json = json.loads(dark("ls", "--tenant", name, "--status", "pending", "--json").output)
    assert [item["id"] for item in as_json["items"]] == [str(instance.id)]
    assert dark("ls", "--tenant", name, "--status", "ready", "--json").output.count('"id"') == 0


def test_show_prints_the_instance_and_an_unknown_one_is_the_apis_404(logged_in, registry):
    name = tenant()
    instance, _ = registry.create(TenantName(name))
    shown = dark("show", name, str(instance.id))
    assert shown.exit_code == 0, shown.output
    assert f"id:           {instance.id}" in shown.output and "pending" in shown.output
    detail = json.loads(dark("show", name, str(instance.id), "--json").output)
    assert detail["instance"]["status"] == "pending"
    missing = dark("show", name, "00000000-0000-4000-8000-000000000000")
    assert missing.exit_code == 1
    assert "no such instance for this tenant (instance_not_found, HTTP 404)" in missing.output


def test_create_for_a_tenant_not_onboarded_prints_the_apis_conflict(logged_in):
    result = dark("create", tenant(), "--wait")
    assert result.exit_code == 1
    assert "is not onboarded" in result.output and "HTTP 409" in result.output


def test_create_with_an_invalid_tenant_names_the_field(logged_in):
    result = dark("create", "bad/name")
    assert result.exit_code == 1 and "tenant:" in result.output and "HTTP 422" in result.output


def test_rm_asks_first_and_does_nothing_when_refused(logged_in, registry):
    name = tenant()
    instance, _ = registry.create(TenantName(name))
    result = dark("rm", name, str(instance.id), input="n\n")
    assert result.exit_code == 1 and "Aborted" in result.output
    assert registry.get(instance.id).status is Status.PENDING


def test_events_follow_prints_each_transition_as_it_happens_until_it_settles(logged_in, registry):
    name = tenant()
    instance, _ = registry.create(TenantName(name))

    def move():
        time.sleep(1)
        registry.transition(instance.id, Status.PENDING, Status.PROVISIONING, "cloud create")
        time.sleep(1)
        registry.transition(instance.id, Status.PROVISIONING, Status.FAILED, "no capacity")

    mover = threading.Thread(target=move)
    mover.start()
    result = dark("events", name, str(instance.id), "-f", "--timeout", "30")
    mover.join()
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert [line.split("  ")[1] for line in lines] == [
        "→ pending",
        "pending → provisioning",
        "provisioning → failed",
    ]
    assert lines[-1].endswith("no capacity")
    as_json = dark("events", name, str(instance.id), "--json")
    assert [e["to"] for e in json.loads(as_json.output)["items"]] == [
        "pending",
        "provisioning",
        "failed",
    ]


# --- tenants ---------------------------------------------------------------------------------


def test_tenants_invite_prints_the_link_and_tenants_ls_shows_it_pending(logged_in):
    name = tenant()
    invited = dark("tenants", "invite", name)
    assert invited.exit_code == 0, invited.output
    link = invited.output.splitlines()[-1]
    assert "#token=" in link  # the link carries the token: handing it over is the point
    listed = json.loads(dark("tenants", "ls", "--json").output)
    (row,) = [t for t in listed["items"] if t["name"] == name]
    assert row["invite"]["state"] == "pending" and row["onboarded"] is False
    table = dark("tenants", "ls")
    assert any(line.split()[0] == name for line in table.output.splitlines()[1:])
    assert link.split("#token=")[1] not in table.output


def test_runs_lists_reconcile_runs(logged_in):
    result = dark("runs", "--json")
    assert result.exit_code == 0, result.output
    assert isinstance(json.loads(result.output)["items"], list)
    assert dark("runs").output.split()[:2] == ["ID", "STARTED"]
