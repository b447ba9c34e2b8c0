"""`make run`: the whole local stack on its simulators, in the foreground; Ctrl-C stops it all.

Starts OpenBao (dev server: KV v2 + transit + the bundle key), the simulators, applies migrations,
then the gateway, the onboarding service, the provisioner worker, the reconcile worker, beat and
Flower. Postgres and Redis are used at DATABASE_URL / REDIS_URL. Runtime files go under .run/.

Least privilege as in production (docs/ARCHITECTURE.md#secrets): the dev server's root token is
made here, handed to OpenBao through its environment (never a command line), used to set up the
role policies and one token per service (deploy/openbao_setup.py), then revoked. Each process gets
only the variables it reads (`service_env`): the onboarding service and the provisioner each their
own VAULT_TOKEN, every other process none. With your own Vault (VAULT_ADDR set), give the tokens
deploy/openbao_setup.py made: ONBOARDING_VAULT_TOKEN and PROVISIONER_VAULT_TOKEN.
"""

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import requests
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from deploy.openbao_setup import ROLE_TOKENS
from shared.celery_app import QUEUE_PROVISION, QUEUE_RECONCILE, broker_client, make_celery
from shared.settings import SERVICE_SETTINGS, env_names, load_settings

ROOT = Path(__file__).resolve().parents[1]
RUN = ROOT / ".run"
BIN = Path(sys.executable).parent
# The role tokens' TTL here: the dev server's own max_lease_ttl (32 days) caps it anyway.
DEV_TOKEN_TTL = "768h"
# Variables outside shared/settings.py that only some processes read (the cloud SDK reads
# YC_METADATA_ADDR; Flower applies every FLOWER_* variable).
EXTRA_READS = {
    "provisioner": {"YC_METADATA_ADDR"},
    "reconciler": {"YC_METADATA_ADDR"},
}
_OURS = {*env_names(), *ROLE_TOKENS.values(), "YC_METADATA_ADDR", "SIM_ADMIN_URL"}


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# How many lines of a log `make run` shows when its process exits while starting.
LOG_TAIL_LINES = 20


def step(text: str) -> None:
    """One line per start-up step, as it begins."""
    print(f"make run: {text}", flush=True)


def _wait(what: str, check, timeout: float = 60, runner: "Runner | None" = None) -> None:
    """Until `check()` is true; stops at once (SystemExit, with the end of its log) when a process
    of `runner` exits meanwhile, and after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if runner is not None:
            runner.raise_if_one_exited()
        try:
            if check():
                return
        except Exception:  # noqa: S110 - not up yet
            pass
        time.sleep(0.2)
    raise SystemExit(f"make run: {what} did not come up in {timeout:.0f} s; see {RUN}/*.log")


def log_tail(name: str, lines: int = LOG_TAIL_LINES) -> str:
    """The last `lines` lines of .run/<name>.log, indented, for a message."""
    try:
        text = (RUN / f"{name}.log").read_text(errors="replace")
    except OSError:
        return "    (no log)"
    return "\n".join("    " + line for line in text.splitlines()[-lines:]) or "    (empty log)"


# --- before anything starts: what the machine must provide -----------------------------------


def _without_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(":" + parts.password + "@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def _port_problem(variable: str, bind: str) -> str | None:
    """Why `bind` (host:port) cannot be listened on, or None when it can."""
    import socket

    host, _, port = bind.rpartition(":")
    try:
        with socket.socket() as s:
            s.bind((host or "127.0.0.1", int(port)))
    except ValueError:
        return f"{variable}={bind} is not host:port"
    except OSError as exc:
        return (
            f"port {port} ({variable}={bind}) is taken ({exc.strerror}): stop what listens there "
            f"(`ss -ltnp 'sport = :{port}'` shows it) or set {variable} to a free host:port"
        )
    return None


def preflight(env: dict) -> list[str]:
    """What keeps `make run` from starting, each with what to do about it: Postgres and Redis must
    answer at DATABASE_URL and REDIS_URL, and the ports of the gateway, the onboarding service and
    Flower must be free. Empty when all is well."""
    import redis

    problems = []
    database = env["DATABASE_URL"]
    try:
        # The server's own database, with the URL's TLS parameters (make_conninfo keeps them).
        psycopg.connect(
            make_conninfo(database, dbname="postgres"), connect_timeout=3, autocommit=True
        ).close()
    except psycopg.Error as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        problems.append(
            f"Postgres does not answer at {_without_password(database)} ({first}): start it "
            "(e.g. `service postgresql start`) or point DATABASE_URL at one"
        )
    try:
        client = broker_client(
            make_celery(load_settings(env)), socket_connect_timeout=3, socket_timeout=3
        )
        client.ping()
        client.close()
    except (redis.RedisError, OSError, ValueError) as exc:
        problems.append(
            f"Redis does not answer at {_without_password(env['REDIS_URL'])} ({exc}): start it "
            "(e.g. `service redis-server start`) or point REDIS_URL at one"
        )
    for variable, bind in (
        ("DARK_BIND", env["DARK_BIND"]),
        ("DARK_ONBOARDING_BIND", env["DARK_ONBOARDING_BIND"]),
        ("FLOWER_PORT", f"127.0.0.1:{env['FLOWER_PORT']}"),
    ):
        problem = _port_problem(variable, bind)
        if problem:
            problems.append(problem)
    return problems


class Runner:
    def __init__(self) -> None:
        self.procs: list[tuple[str, subprocess.Popen]] = []

    def start(self, name: str, argv: list[str], env: dict, stdout=None) -> subprocess.Popen:
        log = open(RUN / f"{name}.log", "ab")  # noqa: SIM115 - lives as long as the process
        proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=env,
            stdout=stdout or log,
            stderr=log,
            start_new_session=True,
        )
        self.procs.append((name, proc))
        return proc

    def raise_if_one_exited(self) -> None:
        """SystemExit naming the first process that has exited, with the end of its log."""
        for name, proc in self.procs:
            if proc.poll() is not None:
                raise SystemExit(
                    f"make run: {name} exited ({proc.returncode}) while starting; the end of "
                    f".run/{name}.log:\n{log_tail(name)}"
                )

    def stop(self) -> None:
        for _, proc in reversed(self.procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for _, proc in reversed(self.procs):
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


def _token(env: dict, name: str, prefix: str, generated: dict) -> None:
    if not env.get(name, "").strip():
        env[name] = prefix + secrets.token_urlsafe(24)
        generated[name] = env[name]


def plain_env(env: dict) -> dict:
    """`env` less every variable of this project: for OpenBao and the simulators."""
    return {k: v for k, v in env.items() if k not in _OURS and not k.startswith("FLOWER_")}


def service_env(env: dict, service: str) -> dict:
    """What the process `service` (a key of shared.settings.SERVICE_SETTINGS) is started with: the
    variables of `env` it reads, its role's Vault token as VAULT_TOKEN when it has a role, and the
    rest of the environment (PATH, HOME, ...) less every other variable of this project."""
    reads = SERVICE_SETTINGS[service] | EXTRA_READS.get(service, set())
    out = plain_env(env) | {k: v for k, v in env.items() if k in reads}
    if service == "flower":
        out.update({k: v for k, v in env.items() if k.startswith("FLOWER_")})
    out.pop("VAULT_TOKEN", None)
    if service in ROLE_TOKENS and env.get(ROLE_TOKENS[service]):
        out["VAULT_TOKEN"] = env[ROLE_TOKENS[service]]
    return out


def flower_env(env: dict, generated: dict) -> None:
    """Flower's settings in `env`: always basic auth (generated when unset), on loopback."""
    if not env.get("FLOWER_BASIC_AUTH"):
        env["FLOWER_BASIC_AUTH"] = "admin:" + secrets.token_urlsafe(12)
        generated["FLOWER_BASIC_AUTH"] = env["FLOWER_BASIC_AUTH"]
    # Flower applies every FLOWER_* variable: an inherited one must not open its API.
    env.pop("FLOWER_UNAUTHENTICATED_API", None)
    env.setdefault("FLOWER_PORT", "5555")
    env.setdefault("DARK_FLOWER_URL", _flower_url(env))  # the dashboard links to it


def write_private(path: Path, text: str) -> None:
    """Write `path` readable by its owner only, at every moment: a temporary file created 0600
    (never wider, whatever the umask or an older file's mode), then renamed over `path`."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def main() -> int:
    RUN.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if v.strip()}
    env.setdefault("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/dark")
    env.setdefault("REDIS_URL", "redis://127.0.0.1:6379/0")
    env.setdefault("DARK_BIND", "127.0.0.1:8080")
    env.setdefault("DARK_ONBOARDING_BIND", "127.0.0.1:8081")
    env.setdefault("DARK_DEPLOYMENT", "local")
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.setdefault("GRPC_VERBOSITY", "ERROR")
    if env.get("DARK_ENV") != "production":  # where the exemption is refused
        # The local stack only: a Prometheus or curl on this host reads /metrics without a token.
        env.setdefault("DARK_METRICS_LOOPBACK_OPEN", "true")
    generated: dict[str, str] = {}
    _token(env, "DARK_API_TOKENS", "op-", generated)
    _token(env, "DARK_ONBOARDING_TOKENS", "onb-", generated)
    flower_env(env, generated)
    step("checking Postgres, Redis and the ports...")
    problems = preflight(env)
    if problems:
        print("\n".join(f"make run: {problem}" for problem in problems), flush=True)
        return 2
    write_private(RUN / "tokens.json", json.dumps(generated, indent=2))
    # Where `dark login` finds this run's services (cli/config.py).
    endpoints = {"gateway": "http://" + env["DARK_BIND"]}
    endpoints["onboarding"] = "http://" + env["DARK_ONBOARDING_BIND"]
    write_private(RUN / "endpoints.json", json.dumps(endpoints, indent=2))

    runner = Runner()
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        _create_database(env["DATABASE_URL"])
        step("OpenBao...")
        _start_openbao(runner, env)
        step("simulators...")
        _start_simulators(runner, env)
        step("migrations...")
        subprocess.run(
            [sys.executable, "-m", "devtools.migrate"],
            cwd=ROOT,
            env=service_env(env, "migrate"),
            check=True,
        )
        step("services (gateway, onboarding, provisioner, reconciler, beat, Flower)...")
        _start_services(runner, env)
        _announce(env, generated)
        while True:
            for name, proc in runner.procs:
                if proc.poll() is not None:
                    print(
                        f"make run: {name} exited ({proc.returncode}); the end of "
                        f".run/{name}.log:\n{log_tail(name)}",
                        flush=True,
                    )
                    return 1
            time.sleep(1)
    except subprocess.CalledProcessError as failed:
        print(f"make run: {failed.cmd[-1]} failed ({failed.returncode}); see its output above")
        return 1
    except SystemExit as stop:
        # A step failed: its message, then everything started so far stops (finally).
        print(stop.code if isinstance(stop.code, str) else f"make run: failed ({stop.code})")
        return 1
    except KeyboardInterrupt:
        print("\nmake run: stopping")
        return 0
    finally:
        runner.stop()


def _create_database(url: str) -> None:
    name = conninfo_to_dict(url)["dbname"]
    admin = make_conninfo(url, dbname="postgres")
    with psycopg.connect(admin, autocommit=True, connect_timeout=5) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{name}"')


def _start_openbao(runner: Runner, env: dict) -> None:
    """OpenBao for the run, set up with the role policies; leaves the role tokens in `env` (under
    ROLE_TOKENS' names) and no token that could do more."""
    # An inherited VAULT_TOKEN is nobody's here: each service gets its role's token.
    env.pop("VAULT_TOKEN", None)
    if env.get("VAULT_ADDR"):
        missing = [name for name in ROLE_TOKENS.values() if not env.get(name)]
        if missing:
            raise SystemExit(
                f"make run: with your own Vault (VAULT_ADDR) set {' and '.join(missing)}: the "
                "tokens deploy/openbao_setup.py creates (never a root token)"
            )
        return
    import hvac

    from deploy.openbao_setup import configure

    port = _free_port()
    root = "root-" + secrets.token_hex(16)
    runner.start(
        "openbao",
        [str(BIN / "bao"), "server", "-dev", f"-dev-listen-address=127.0.0.1:{port}"],
        # Through the environment: a command line is readable by every user of the machine.
        {**plain_env(env), "HOME": str(RUN), "BAO_DEV_ROOT_TOKEN_ID": root},
    )
    env["VAULT_ADDR"] = f"http://127.0.0.1:{port}"
    _wait(
        "OpenBao",
        lambda: requests.get(env["VAULT_ADDR"] + "/v1/sys/health", timeout=1).ok,
        runner=runner,
    )
    tokens = {role: f"{role}-" + secrets.token_hex(16) for role in ROLE_TOKENS}
    settings = load_settings(
        {k: env.get(k, "") for k in ("VAULT_KV_MOUNT", "VAULT_TRANSIT_MOUNT", "DARK_BUNDLE_KEY")}
    )
    client = hvac.Client(url=env["VAULT_ADDR"], token=root, timeout=10)
    configure(client, settings, tokens, ttl=DEV_TOKEN_TTL)
    # Set up done: the root token is revoked, so nothing left on this machine can do more than a
    # service's role.
    client.auth.token.revoke_self()
    for role, token in tokens.items():
        env[ROLE_TOKENS[role]] = token


def _start_simulators(runner: Runner, env: dict) -> None:
    proc = runner.start(
        "sim",
        [
            sys.executable,
            "-m",
            "sim",
            "--state-dir",
            str(RUN),
            "--operation-delay",
            env.get("SIM_OPERATION_DELAY", "2"),
            "--boot-delay",
            env.get("SIM_BOOT_DELAY", "3"),
        ],
        plain_env(env),
        stdout=subprocess.PIPE,
    )
    assert proc.stdout is not None  # stdout=PIPE
    line = proc.stdout.readline()
    if not line:
        raise SystemExit(
            f"make run: the simulators did not start; the end of .run/sim.log:\n{log_tail('sim')}"
        )
    (RUN / "sim.json").write_bytes(line)
    info = json.loads(line)
    env.update(
        YC_ENDPOINT=info["yc_endpoint"],
        YC_ROOT_CERT=info["yc_root_cert"],
        YC_IAM_TOKEN=info["yc_iam_token"],
        DARK_AGENT_PORT=str(info["agent_port"]),
        DARK_VM_IMAGE=env.get("DARK_VM_IMAGE", "dark-agent-sim-image"),
        YC_METADATA_ADDR="127.0.0.1:1",
    )
    env["SIM_ADMIN_URL"] = info["admin_url"]
    # The VMs' interfaces carry a security group, as in production: the simulated cloud makes one.
    group = requests.post(info["admin_url"] + "/cloud/security-groups", json={}, timeout=10)
    group.raise_for_status()
    env["YC_SECURITY_GROUP_IDS"] = group.json()["id"]


def _celery(*args: str) -> list[str]:
    return [sys.executable, "-m", "celery", *args]


def _gunicorn(service: str) -> list[str]:
    conf = f"services/{service}/gunicorn.conf.py"
    return [str(BIN / "gunicorn"), "-c", conf, f"services.{service}.wsgi:app"]


# The settings each process of `service_commands` loads (shared.settings.SERVICE_SETTINGS).
SERVICE_OF = {
    "api": "api",
    "onboarding": "onboarding",
    "provisioner": "provisioner",
    "reconciler": "reconciler",
    "beat": "beat",
    "flower": "flower",
}


def service_commands(env: dict) -> dict[str, list[str]]:
    """The processes `make run` starts after migrations, by name (also the name of each log).

    A test checks that every queue of shared.celery_app is consumed here, that there is one beat,
    and that Flower listens on loopback with FLOWER_BASIC_AUTH in its environment: Flower reads it
    from there, which keeps the password out of the process list.
    """
    return {
        "api": _gunicorn("api"),
        "onboarding": _gunicorn("onboarding"),
        "provisioner": _celery(
            "-A",
            "services.provisioner.worker",
            "worker",
            "-Q",
            QUEUE_PROVISION,
            "--concurrency=2",
            "--hostname=provisioner@%h",
            "--loglevel=INFO",
        ),
        "reconciler": _celery(
            "-A",
            "services.reconciler.worker",
            "worker",
            "-Q",
            QUEUE_RECONCILE,
            "--concurrency=1",
            "--hostname=reconciler@%h",
            "--loglevel=INFO",
        ),
        "beat": _celery(
            "-A",
            "services.reconciler.beat",
            "beat",
            f"--schedule={RUN / 'celerybeat-schedule'}",
            "--loglevel=INFO",
        ),
        "flower": _celery(
            "-A",
            "services.flower",
            "flower",
            "--address=127.0.0.1",
            f"--port={env['FLOWER_PORT']}",
        ),
    }


def _start_services(runner: Runner, env: dict) -> None:
    for name, argv in service_commands(env).items():
        runner.start(name, argv, service_env(env, SERVICE_OF[name]))
    api = "http://" + env["DARK_BIND"]
    onboarding = "http://" + env["DARK_ONBOARDING_BIND"]
    _wait("the gateway", lambda: requests.get(api + "/ready", timeout=1).ok, runner=runner)
    _wait("onboarding", lambda: requests.get(onboarding + "/health", timeout=1).ok, runner=runner)
    flower = _flower_url(env) + "/healthcheck"
    _wait("Flower", lambda: requests.get(flower, timeout=1).ok, runner=runner)


def _flower_url(env: dict) -> str:
    return f"http://127.0.0.1:{env['FLOWER_PORT']}"


def _announce(env: dict, generated: dict) -> None:
    api = "http://" + env["DARK_BIND"]
    lines = [
        "",
        "dark-orchestrator is running (Ctrl-C stops everything). Logs: .run/*.log",
        f"  gateway     {api}   (API docs: {api}/docs)",
        f"  onboarding  http://{env['DARK_ONBOARDING_BIND']}   (API docs: /docs)",
        f"  Flower      {_flower_url(env)}   (basic auth: FLOWER_BASIC_AUTH)",
        f"  OpenBao     {env['VAULT_ADDR']}",
        f"  simulators  admin {env['SIM_ADMIN_URL']}",
    ]
    if generated:
        lines.append("  generated credentials (also in .run/tokens.json):")
        lines += [f"    {k}={v}" for k, v in generated.items()]
    print("\n".join(lines), flush=True)


if __name__ == "__main__":
    sys.exit(main())
