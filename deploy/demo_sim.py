"""Simulators for the compose `demo` profile: `python -m sim`, its certificate at a fixed path.

The simulator names its TLS certificate after its pid and prints where it is; the services of the
demo read YC_ROOT_CERT from their environment, so this copies the certificate to
`<state dir>/yc-root.pem` and writes the simulator's JSON line to `<state dir>/sim.json` (what the
healthcheck waits for). The simulated cloud accepts exactly YC_IAM_TOKEN, the token the demo's
services present (both read it from .env).

    python -m deploy.demo_sim --state-dir DIR [any other `python -m sim` option]

Everything the simulator serves (the YC API, the admin API, each VM's guest agent) is on loopback
addresses: the services that call it share this container's network namespace.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

ROOT_CERT = "yc-root.pem"
INFO = "sim.json"


def _state_dir(argv: list[str]) -> Path:
    for i, arg in enumerate(argv):
        if arg == "--state-dir" and i + 1 < len(argv):
            return Path(argv[i + 1])
        if arg.startswith("--state-dir="):
            return Path(arg.partition("=")[2])
    raise SystemExit("demo_sim: --state-dir is required")


def main(argv: list[str]) -> int:
    token = os.environ.get("YC_IAM_TOKEN", "").strip()
    if not token:
        raise SystemExit("demo_sim: YC_IAM_TOKEN is required (the token the simulated cloud takes)")
    state = _state_dir(argv)
    (state / INFO).unlink(missing_ok=True)
    proc = subprocess.Popen(
        [sys.executable, "-m", "sim", *argv, "--iam-token", token], stdout=subprocess.PIPE
    )
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda sig, _frame: proc.send_signal(sig))
    assert proc.stdout is not None  # stdout=PIPE
    line = proc.stdout.readline()
    if not line:
        return proc.wait() or 1
    info = json.loads(line)
    tmp = state / (ROOT_CERT + ".tmp")
    shutil.copyfile(info["yc_root_cert"], tmp)
    os.replace(tmp, state / ROOT_CERT)
    info["yc_root_cert"] = str(state / ROOT_CERT)
    info.pop("yc_iam_token", None)
    (state / INFO).write_text(json.dumps(info) + "\n")
    print(json.dumps(info), flush=True)
    return proc.wait()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
