"""Issue 13: the README's quick start with the `dark` CLI, run as the README writes it against
`make run` on a fresh copy of the repository: log in (make run's own gateway and token), invite a
tenant who onboards with the invite's token through the onboarding API (what the page does),
`dark create --wait` prints pending → provisioning → initializing → ready, `dark events`, and
`dark rm --wait` ends retired. `--json` output parses; a bad token exits non-zero with the API's
message. The copy, its environment and `make run` itself are test_make_run.py's."""

import contextlib
import json
import os
import re
import signal
import subprocess
from pathlib import Path

import pytest
import requests

from tests.e2e.test_make_run import MakeRun, clone, processes_in, run_env  # noqa: F401
from tests.support.processes import wait_until

pytestmark = pytest.mark.slow

INSTANCE_ID = "<id>"
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def cli_commands(readme: str) -> list[str]:
    """The commands of the README's `sh` blocks that use `dark`, in order, comments dropped."""
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", readme, flags=re.S):
        if "\ndark " not in "\n" + block:
            continue
        for line in block.splitlines():
            command = line.split("  #", 1)[0].strip()
            if command and not command.startswith("#"):
                commands.append(command)
    return commands


class Terminal:
    """Runs commands in the copy as a user would in one terminal: each after the `source` lines
    seen so far (the virtualenv's activate), with a config directory of the test's own."""

    def __init__(self, cwd: Path, config_home: Path) -> None:
        self.cwd = cwd
        self.prelude: list[str] = []
        self.done: list[subprocess.CompletedProcess] = []
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("DARK_")},
            "XDG_CONFIG_HOME": str(config_home),
        }

    def run(self, command: str, *, check: bool = True, env: dict | None = None):
        if command.startswith((". ", "source ")):
            self.prelude.append(command)
            return None
        script = "\n".join(["set -euo pipefail", *self.prelude, command])
        done = subprocess.run(
            ["bash", "-c", script],
            cwd=self.cwd,
            env={**self.env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=120,
        )
        self.done.append(done)
        if check:
            assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"
        return done


def onboard_with_invite(link: str, tenant: str) -> None:
    """What the onboarding page does with the link: the token from its fragment, the secrets PUT
    to the onboarding API for that tenant."""
    base, _, fragment = link.partition("#token=")
    assert fragment, link
    resp = requests.put(
        f"{base.rstrip('/')}/tenants/{tenant}/secrets",
        headers={"Authorization": f"Bearer {fragment}"},
        json={
            "claude_oauth_token": "sk-ant-oat01-demo-token-0123456789",
            "nks_pat": "nks-demo-pat",
            "forges": [{"name": "github", "host": "github.com", "token": "ghp_demo"}],
        },
        timeout=15,
    )
    assert resp.status_code == 204, resp.text


def transitions(output: str) -> list[str]:
    """The statuses an event listing moved to, in order (its `→ <status>` parts)."""
    return re.findall(r"→ ([a-z_]+)", output)


def follow_the_cli_quick_start(terminal: Terminal, commands: list[str]) -> str:
    instance_id = tenant = None
    for command in commands:
        if INSTANCE_ID in command:
            assert instance_id, f"the README uses {INSTANCE_ID} before it creates: {command}"
            command = command.replace(INSTANCE_ID, instance_id)
        done = terminal.run(command)
        if done is None:
            continue
        out = done.stdout
        if command.startswith("dark login"):
            assert "logged in to" in out
        elif command.startswith("dark tenants invite"):
            tenant = command.split()[3]
            onboard_with_invite(out.strip().splitlines()[-1], tenant)
        elif command.startswith("dark create"):
            assert "--wait" in command
            instance_id = _UUID.search(out).group(0)
            assert transitions(out) == ["pending", "provisioning", "initializing", "ready"], out
            assert "opencode" in out and "agent" in out, out
        elif command.startswith("dark events"):
            assert transitions(out) == ["pending", "provisioning", "initializing", "ready"], out
        elif command.startswith("dark rm"):
            assert transitions(out)[-2:] == ["tearing_down", "retired"], out
        elif command.startswith("dark ls"):
            assert instance_id in out and "ready" in out, out
    assert instance_id and tenant, "the README creates an instance for an invited tenant"
    return instance_id


def test_the_readmes_cli_quick_start_against_make_run(clone, run_env, tmp_path):  # noqa: F811
    commands = cli_commands((clone / "README.md").read_text())
    assert any(c.startswith("dark create") and "--wait" in c for c in commands), commands
    terminal = Terminal(clone, tmp_path / "config")
    run = MakeRun(clone, run_env)
    try:
        run.wait_for("is running", timeout=45)
        instance_id = follow_the_cli_quick_start(terminal, commands)

        listed = json.loads(terminal.run("dark ls --json").stdout)
        (item,) = [i for i in listed["items"] if i["id"] == instance_id]
        assert item["status"] == "retired"
        timeline = json.loads(terminal.run(f"dark events demo {instance_id} --json").stdout)
        assert [e["to"] for e in timeline["items"]][-2:] == ["tearing_down", "retired"]

        token = json.loads((clone / ".run" / "tokens.json").read_text())["DARK_API_TOKENS"]
        config = terminal.env["XDG_CONFIG_HOME"] + "/dark/config.json"
        printed = "".join(done.stdout + done.stderr for done in terminal.done)
        assert token not in printed  # the operator token: read, stored, never shown
        bad = terminal.run(
            "dark ls",
            check=False,
            env={"DARK_URL": "http://" + run_env["DARK_BIND"], "DARK_TOKEN": "op-" + "0" * 32},
        )
        assert bad.returncode != 0
        assert "HTTP 401" in bad.stderr and "token" in bad.stderr, bad.stderr
        assert oct(Path(config).stat().st_mode & 0o777) == "0o600"
    finally:
        run.stop()
        with contextlib.suppress(TimeoutError):
            wait_until(lambda: not processes_in(clone), 5, what="every process to exit")
        for pid in processes_in(clone):
            os.kill(pid, signal.SIGKILL)
