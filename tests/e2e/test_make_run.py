"""Issue 6, acceptance 5: `make run` on a fresh copy of the repository, then the README's curl quick
start run as the README writes it, gets a VM to ready; Ctrl-C then stops every process it started.

The copy holds what a clean clone would, plus the work not yet committed: every file git tracks or
would track, nothing it ignores. Its virtualenv is the installed one, linked, with make's install
stamp for these requirements, so that make skips the two-minute install; the install itself on a
clean clone is what CI's `make test` runs (.ci/run). Ports, the database and the Redis DB are the
test's own, so that the run collides with nothing.
"""

import contextlib
import json
import os
import queue
import re
import secrets
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import psycopg
import pytest

from shared.settings import env_names
from tests.conftest import PG_ADMIN_DSN, REDIS_BASE
from tests.support.processes import ROOT, free_port, wait_until
from tests.support.stack import claimed_redis_db

pytestmark = pytest.mark.slow

README_API = "localhost:8080"
README_ONBOARDING = "localhost:8081"
INSTANCE_ID = "<id>"
# Variables of the test's own environment that would steer `make run`: not passed on.
_STEERING = {
    *env_names(),
    "FLOWER_PORT",
    "SIM_OPERATION_DELAY",
    "SIM_BOOT_DELAY",
    "PROMETHEUS_MULTIPROC_DIR",
    "PYTHONPATH",
    "MAKEFLAGS",
    "MFLAGS",
    "MAKELEVEL",
}


# --- the copy -------------------------------------------------------------------------------------


@pytest.fixture
def clone(tmp_path) -> Path:
    dest = tmp_path / "dark-orchestrator"
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout
    for name in filter(None, listed.decode().split("\0")):
        source = ROOT / name
        if source.is_file():  # a tracked file deleted in the working tree is not copied
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)  # keeps mtimes older than the stamp below
    venv = dest / ".venv"
    venv.mkdir()
    for entry in ("bin", "lib"):
        (venv / entry).symlink_to(ROOT / ".venv" / entry)
    shutil.copy2(ROOT / ".venv" / "pyvenv.cfg", venv / "pyvenv.cfg")
    stamp = subprocess.run(
        ["make", "--no-print-directory", "--eval", "print-stamp: ; @echo $(STAMP)", "print-stamp"],
        cwd=dest,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    (dest / stamp).touch()
    assert subprocess.run(["make", "-q", "install"], cwd=dest).returncode == 0, "install is done"
    return dest


def processes_in(directory: Path) -> dict[int, str]:
    """Live processes working in `directory`, by pid: every process `make run` starts works in the
    repository it runs from."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if Path(os.readlink(entry / "cwd")).is_relative_to(directory):
                cmdline = (entry / "cmdline").read_bytes()
                found[int(entry.name)] = cmdline.replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # gone meanwhile, or a zombie
            continue
    return found


# --- the README's quick start ---------------------------------------------------------------------


def readme_commands(readme: str) -> list[str]:
    """The shell commands of the README's `sh` blocks that call curl, in order: a command is a line
    starting in the first column and the indented lines under it; comment lines are skipped."""
    commands: list[str] = []
    for block in re.findall(r"```sh\n(.*?)```", readme, flags=re.S):
        if "curl" not in block:
            continue
        for line in block.splitlines():
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            if line[0].isspace():
                commands[-1] += "\n" + line
            else:
                commands.append(line)
    return commands


class Shell:
    """Runs the README's commands in the copy, as a user would paste them: each in bash, after the
    variable assignments (`TOKEN=$(...)`) seen so far."""

    def __init__(self, cwd: Path, api_port: str, onboarding_port: str) -> None:
        self.cwd = cwd
        self.replacements = {
            README_API: f"localhost:{api_port}",
            README_ONBOARDING: f"localhost:{onboarding_port}",
        }
        self.assignments: list[str] = []

    def run(self, command: str, **replacements: str) -> str:
        for old, new in {**self.replacements, **replacements}.items():
            command = command.replace(old, new)
        if re.match(r"[A-Z_]+=", command):
            self.assignments.append(command)
            return ""
        script = "\n".join(["set -euo pipefail", *self.assignments, command])
        done = subprocess.run(
            ["bash", "-c", script], cwd=self.cwd, capture_output=True, text=True, timeout=30
        )
        assert done.returncode == 0, f"{command}\n{done.stderr}"
        return done.stdout


# --- the run --------------------------------------------------------------------------------------


class MakeRun:
    """`make run` in its own process group, as a terminal runs it, with its output read by a thread
    (so that waiting for a line has a deadline)."""

    def __init__(self, cwd: Path, env: dict) -> None:
        self.proc = subprocess.Popen(
            ["make", "run"],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.output: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line)

    def wait_for(self, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.2)
            except queue.Empty:
                assert self.proc.poll() is None, "make run exited:\n" + "".join(self.output)
                continue
            self.output.append(line)
            if text in line:
                return
        raise AssertionError(f"no {text!r} in {timeout} s:\n" + "".join(self.output))

    def stop(self) -> None:
        """Ctrl-C, as a terminal sends it: SIGINT to make's process group; SIGKILL to the group if
        it is still there 30 s later."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)

    def rest_of_output(self) -> str:
        """Everything it printed, once it has exited."""
        self._reader.join(5)
        while not self.lines.empty():
            self.output.append(self.lines.get_nowait())
        return "".join(self.output)


@pytest.fixture
def run_env():
    """The environment of the run: the test's own, less anything that would steer `make run`,
    plus free ports, a database name of its own (make run creates it) and a Redis DB of its own."""
    env = {k: v for k, v in os.environ.items() if k not in _STEERING}
    database = f"dark_makerun_{secrets.token_hex(4)}"
    with claimed_redis_db(REDIS_BASE) as redis_url:
        yield {
            **env,
            "DATABASE_URL": f"{PG_ADMIN_DSN.rsplit('/', 1)[0]}/{database}",
            "REDIS_URL": redis_url,
            "DARK_BIND": f"127.0.0.1:{free_port()}",
            "DARK_ONBOARDING_BIND": f"127.0.0.1:{free_port()}",
            "FLOWER_PORT": str(free_port()),
        }
        with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


def follow_the_quick_start(shell: Shell, commands: list[str]) -> None:
    """Each command in the README's order, checking what it answers; the instance's detail is run
    again until the VM is ready, as a user would."""
    instance_id = None
    for command in commands:
        if INSTANCE_ID not in command:
            out = shell.run(command)
            if "-X POST" in command and "/instances" in command:
                accepted = json.loads(out)
                assert accepted["instance"]["status"] == "pending", out
                instance_id = accepted["instance"]["id"]
            elif "/secrets" in command and "-X" not in command:
                assert json.loads(out)["version"] == 1, out
            continue
        assert instance_id, f"the README uses {INSTANCE_ID} before it provisions: {command}"
        ids = {INSTANCE_ID: instance_id}
        if "-X DELETE" in command:
            assert json.loads(shell.run(command, **ids))["instance"]["status"] == "tearing_down"
        elif "/events" in command:
            timeline = [event["to"] for event in json.loads(shell.run(command, **ids))["items"]]
            assert timeline == ["pending", "provisioning", "initializing", "ready"], timeline
        else:

            def ready(command=command, ids=ids):
                detail = json.loads(shell.run(command, **ids))
                return detail if detail["instance"]["status"] == "ready" else None

            detail = wait_until(ready, 30, interval=0.5, what="the README's VM to be ready")
            assert detail["guest"]["reachable"] is True, detail
    assert instance_id, "the README provisions a VM"


def environ_of(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace")
    return dict(item.split("=", 1) for item in raw.split("\0") if "=" in item)


def assert_least_privilege(started: dict[int, str]) -> None:
    """The gateway's processes hold no Vault token, no token is on any command line, and only the
    onboarding service and the provisioner hold one, each a different one (their roles')."""
    tokens: dict[str, set[str]] = {}
    for pid, cmdline in started.items():
        assert "root-token" not in cmdline and "VAULT_TOKEN" not in cmdline, cmdline
        try:
            token = environ_of(pid).get("VAULT_TOKEN")
        except OSError:  # gone meanwhile
            continue
        for name in ("services.api.", "services.onboarding.", "services.provisioner."):
            if name in cmdline:
                tokens.setdefault(name, set()).add(token or "")
        if "services.api." in cmdline or "flower" in cmdline or "beat" in cmdline:
            assert not token, f"{cmdline} holds a Vault token"
        if "services.reconciler.worker" in cmdline:
            assert not token, f"{cmdline} holds a Vault token"
    assert tokens["services.api."] == {""}
    (onboarding,), (provisioner,) = tokens["services.onboarding."], tokens["services.provisioner."]
    assert onboarding and provisioner and onboarding != provisioner
    for cmdline in started.values():
        assert onboarding not in cmdline and provisioner not in cmdline


def test_make_run_then_the_readme_quick_start_gets_a_vm_to_ready(clone, run_env):
    commands = readme_commands((clone / "README.md").read_text())
    text = "\n".join(commands)
    assert README_API in text and README_ONBOARDING in text and INSTANCE_ID in text, text
    api_port, onboarding_port = (
        run_env[name].rpartition(":")[2] for name in ("DARK_BIND", "DARK_ONBOARDING_BIND")
    )

    run = MakeRun(clone, run_env)
    try:
        run.wait_for("is running", timeout=45)
        started = processes_in(clone)
        for program in ("gunicorn", "celery", "bao", "-m sim"):
            assert any(program in cmdline for cmdline in started.values()), (program, started)
        assert_least_privilege(started)
        follow_the_quick_start(Shell(clone, api_port, onboarding_port), commands)
    finally:
        run.stop()
        with contextlib.suppress(TimeoutError):
            wait_until(lambda: not processes_in(clone), 5, what="every process to exit")
        left = processes_in(clone)
        for pid in left:  # this run's, ended so that a failure leaves none behind
            os.kill(pid, signal.SIGKILL)
    assert "make run: stopping" in run.rest_of_output()
    assert not left, f"left running after Ctrl-C: {left}"


# --- a first run that cannot start ----------------------------------------------------------------


def make_run_refused(clone: Path, env: dict) -> tuple[str, float]:
    """`make run` that must give up by itself: its output and how long it took."""
    started = time.monotonic()
    done = subprocess.run(
        ["make", "run"], cwd=clone, env=env, capture_output=True, text=True, timeout=30
    )
    took = time.monotonic() - started
    assert done.returncode != 0, done.stdout
    assert not processes_in(clone), "nothing it started is left"
    return done.stdout + done.stderr, took


def test_make_run_with_redis_down_says_so_within_10_s(clone, run_env):
    with socket.socket() as closed:  # a port where nothing listens
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    output, took = make_run_refused(clone, {**run_env, "REDIS_URL": f"redis://127.0.0.1:{port}/0"})
    assert f"Redis does not answer at redis://127.0.0.1:{port}/0" in output, output
    assert "REDIS_URL" in output and "Postgres does not answer" not in output, output
    assert took < 10, output


def test_make_run_with_the_gateway_port_taken_says_so_within_10_s(clone, run_env):
    port = run_env["DARK_BIND"].rpartition(":")[2]
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", int(port)))
        taken.listen()
        output, took = make_run_refused(clone, run_env)
    assert f"port {port} (DARK_BIND=127.0.0.1:{port}) is taken" in output, output
    assert "Redis does not answer" not in output, output
    assert took < 10, output
