"""Issue 6, acceptance 4: the deployment files agree with the code.

`docker compose config` (the Compose client only: no engine is needed) validates docker-compose.yml
with a throwaway environment, and its JSON is checked: every Celery queue the code routes to is
consumed by a worker service, there is one beat, Flower is authenticated and on loopback, no Vault
runs in dev mode, every Python service runs the one non-root image with settings that pass the
production checks. The same queue check runs on `make run`'s process list. The OpenBao set-up
script runs against a real, non-dev OpenBao started from the shipped server config.
"""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import hvac
import pytest
import requests

from devtools import run as make_run
from shared.celery_app import QUEUES, ROUTES
from shared.settings import SERVICE_SETTINGS, SettingsError, env_names, load_settings
from tests.support.processes import (
    ROOT,
    VENV_BIN,
    bao_binary,
    free_port,
    spawn,
    stop_process,
    wait_until,
)

INSTALL_HINT = (
    "Docker Compose v2 is required for this test and is not installed (Debian bookworm has no "
    "Compose v2 package). `make test` installs it (devtools/ensure-tools.sh); by hand: "
    "bash deploy/install-compose.sh"
)
# What an operator's .env must provide; dummy values of the right shape.
REQUIRED_ENV = {
    "POSTGRES_PASSWORD": "pg0123456789abcdef",
    "REDIS_PASSWORD": "redis0123456789abcdef",
    "ONBOARDING_VAULT_TOKEN": "onbv-0123456789abcdef0123456789abcdef",
    "PROVISIONER_VAULT_TOKEN": "prov-0123456789abcdef0123456789abcdef",
    "DARK_API_TOKENS": "op-0123456789abcdef0123",
    "DARK_ONBOARDING_TOKENS": "onb-0123456789abcdef0123",
    "DARK_SESSION_SECRET": "s" * 40,
    "FLOWER_BASIC_AUTH": "admin:flower0123456789",
    "DARK_VM_IMAGE": "fd8image0123456789",
    "YC_SECURITY_GROUP_IDS": "enpsg0123456789abcdef",
    "DARK_DEPLOYMENT": "compose-test",
}
OPTIONAL_ENV = {"YC_IAM_TOKEN": "t1.sim-token-0123456789"}
PROFILES = [("cloud",), ("demo",)]
# Ours, but not a service of the control plane (they read no settings).
HELPERS = {"sim", "vault-init", "vault-setup"}
# The settings (shared.settings.SERVICE_SETTINGS) each compose service of ours loads.
ROLE_OF = {
    "api": "api",
    "demo-api": "api",
    "onboarding": "onboarding",
    "provisioner": "provisioner",
    "demo-provisioner": "provisioner",
    "reconciler": "reconciler",
    "demo-reconciler": "reconciler",
    "beat": "beat",
    "flower": "flower",
    "migrate": "migrate",
}
# Variables outside shared/settings.py a service may be given: the cloud SDK's metadata address.
EXTRA_READS = {"provisioner": {"YC_METADATA_ADDR"}, "reconciler": {"YC_METADATA_ADDR"}}


# --- docker compose config ------------------------------------------------------------------------


def compose_command() -> list[str]:
    """`docker compose` (the CLI plugin), or a v2 `docker-compose` on PATH or in the virtualenv
    (where devtools/ensure-tools.sh puts it on a machine without the Docker client)."""
    candidates = []
    if shutil.which("docker"):
        candidates.append(["docker", "compose"])
    if shutil.which("docker-compose"):
        candidates.append(["docker-compose"])
    if (VENV_BIN / "docker-compose").exists():
        candidates.append([str(VENV_BIN / "docker-compose")])
    for command in candidates:
        result = subprocess.run(
            [*command, "version", "--short"], capture_output=True, text=True, check=False
        )
        if result.returncode == 0 and result.stdout.strip().lstrip("v").startswith("2."):
            return command
    pytest.fail(INSTALL_HINT)


def run_compose(
    tmp_path: Path, *args: str, env: dict | None = None, profiles=(), env_file: Path | None = None
):
    """`docker compose ...` on the repository's file with exactly `env` as its environment: no
    variable of the caller's shell and no .env of the working tree takes part."""
    if env_file is None:
        env_file = tmp_path / "empty.env"
        env_file.write_text("")
    keep = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "DOCKER_CONFIG")}
    argv = [
        *compose_command(),
        "--project-directory",
        str(ROOT),
        "--file",
        str(ROOT / "docker-compose.yml"),
        "--env-file",
        str(env_file),
    ]
    for profile in profiles:
        argv += ["--profile", profile]
    return subprocess.run(
        [*argv, *args],
        capture_output=True,
        text=True,
        env={**keep, **(REQUIRED_ENV | OPTIONAL_ENV if env is None else env)},
        timeout=60,
        check=False,
    )


def compose_config(tmp_path: Path, profiles=()) -> dict:
    result = run_compose(tmp_path, "config", "--format", "json", profiles=profiles)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def celery_role(argv: list[str]) -> tuple[str, set[str]] | None:
    """("worker", its queues) / ("beat", ∅) / ("flower", ∅) for a Celery command line."""
    if "celery" not in argv:
        return None
    rest = argv[argv.index("celery") + 1 :]
    subcommand, queues, i = None, set(), 0
    while i < len(rest):
        arg = rest[i]
        if arg in ("-A", "--app", "-Q", "--queues"):
            if arg in ("-Q", "--queues"):
                queues |= set(rest[i + 1].split(","))
            i += 2
            continue
        if arg.startswith(("--queues=", "-Q")) and arg not in ("-Q",):
            queues |= set(arg.split("=", 1)[-1].removeprefix("-Q").split(","))
        elif not arg.startswith("-") and subcommand is None:
            subcommand = arg
        i += 1
    return (subcommand, queues) if subcommand else None


def roles(commands: dict[str, list[str]]) -> dict[str, tuple[str, set[str]]]:
    found = {}
    for name, argv in commands.items():
        role = celery_role(argv or [])
        if role:
            found[name] = role
    return found


def service_commands(config: dict) -> dict[str, list[str]]:
    return {name: svc.get("command") or [] for name, svc in config["services"].items()}


def assert_every_queue_consumed_and_one_beat(commands: dict[str, list[str]], where: str) -> None:
    found = roles(commands)
    consumed = set().union(*(q for role, q in found.values() if role == "worker"))
    routed = {route["queue"] for route in ROUTES.values()}
    assert routed <= set(QUEUES), "a route names a queue that shared.celery_app does not declare"
    missing = set(QUEUES) - consumed
    assert not missing, f"{where}: no worker consumes {sorted(missing)}"
    beats = [name for name, (role, _) in found.items() if role == "beat"]
    assert len(beats) == 1, f"{where}: expected exactly one beat, found {beats}"
    for name, (role, queues) in found.items():
        if role == "worker":
            assert queues, f"{where}: worker {name} consumes no named queue (-Q)"


def test_compose_config_is_valid_without_a_profile_and_with_each(tmp_path):
    for profiles in [(), ("cloud",), ("demo",), ("setup",), ("cloud", "demo")]:
        result = run_compose(tmp_path, "config", "--quiet", profiles=profiles)
        assert result.returncode == 0, f"profiles {profiles}: {result.stderr}"


@pytest.mark.parametrize("name", sorted(REQUIRED_ENV))
def test_compose_refuses_to_start_without_a_required_secret(tmp_path, name):
    env = {k: v for k, v in (REQUIRED_ENV | OPTIONAL_ENV).items() if k != name}
    result = run_compose(tmp_path, "config", "--quiet", env=env, profiles=("cloud",))
    assert result.returncode != 0
    assert name in result.stderr


@pytest.mark.parametrize("profiles", PROFILES, ids="-".join)
def test_every_routed_queue_has_a_worker_service_and_there_is_one_beat(tmp_path, profiles):
    config = compose_config(tmp_path, profiles)
    assert_every_queue_consumed_and_one_beat(service_commands(config), f"compose {profiles}")


def test_nothing_enqueues_reconciles_when_no_worker_runs(tmp_path):
    # Without a profile no worker runs, so no beat may run either.
    found = roles(service_commands(compose_config(tmp_path)))
    assert {role for role, _ in found.values()} <= {"flower"}
    # And with both profiles at once, still a single beat.
    both = roles(service_commands(compose_config(tmp_path, ("cloud", "demo"))))
    assert sum(role == "beat" for role, _ in both.values()) == 1


@pytest.mark.parametrize("profiles", [(), *PROFILES], ids=lambda p: "-".join(p) or "none")
def test_flower_is_behind_basic_auth_and_published_on_loopback_only(tmp_path, profiles):
    config = compose_config(tmp_path, profiles)
    flowers = {
        name: svc
        for name, svc in config["services"].items()
        if (celery_role(svc.get("command") or []) or ("", ""))[0] == "flower"
    }
    assert list(flowers) == ["flower"]
    flower = flowers["flower"]
    auth = flower["environment"].get("FLOWER_BASIC_AUTH") or ""
    assert re.fullmatch(r"[^:,]+:[^,]+", auth), "Flower must have user:password basic auth"
    assert not any("--basic-auth" in arg for arg in flower["command"]), "keep it off argv"
    for name, svc in config["services"].items():
        assert "FLOWER_UNAUTHENTICATED_API" not in (svc.get("environment") or {}), name
    assert flower["ports"], "Flower is published for the operator"
    for port in flower["ports"]:
        assert port["host_ip"] == "127.0.0.1", port


@pytest.mark.parametrize("profiles", [(), *PROFILES], ids=lambda p: "-".join(p) or "none")
def test_every_published_port_is_on_loopback_by_default(tmp_path, profiles):
    for name, svc in compose_config(tmp_path, profiles)["services"].items():
        for port in svc.get("ports") or []:
            assert port.get("host_ip") == "127.0.0.1", f"{name} publishes {port}"


@pytest.mark.parametrize(
    "profiles", [(), ("cloud",), ("demo",), ("setup",)], ids=lambda p: "-".join(p) or "none"
)
def test_no_service_runs_a_dev_mode_vault(tmp_path, profiles):
    config = compose_config(tmp_path, profiles)
    for name, svc in config["services"].items():
        argv = [*(svc.get("entrypoint") or []), *(svc.get("command") or [])]
        assert not any(arg == "-dev" or arg.startswith("-dev-") for arg in argv), name
        env = svc.get("environment") or {}
        assert not any(k.endswith("DEV_ROOT_TOKEN_ID") for k in env), name
    openbao = config["services"]["openbao"]
    assert openbao["command"] == ["server"]
    (mount,) = [v for v in openbao["volumes"] if v["target"].startswith("/openbao/config/")]
    hcl = Path(mount["source"]).read_text()
    assert 'storage "raft"' in hcl and "inmem" not in hcl


@pytest.mark.parametrize("profiles", PROFILES, ids="-".join)
def test_python_services_run_the_one_image_as_non_root_with_valid_settings(tmp_path, profiles):
    config = compose_config(tmp_path, profiles)
    ours = {n: s for n, s in config["services"].items() if s.get("build")}
    assert {s["build"]["context"] for s in ours.values()} == {str(ROOT)}
    assert {s["build"].get("dockerfile", "Dockerfile") for s in ours.values()} == {"Dockerfile"}
    assert len({s["image"] for s in ours.values()}) == 1, "one image for every Python service"
    expected = {"onboarding", "migrate", "beat", "flower"} | (
        {"api", "provisioner", "reconciler"} if "cloud" in profiles else {"sim", "demo-api"}
    )
    assert expected <= set(ours)
    for name, svc in ours.items():
        assert str(svc.get("user", "")).split(":")[0] not in ("root", "0"), name
        if name in HELPERS:
            continue
        role = ROLE_OF[name]
        # What the image's ENV sets (the gateway's DARK_BIND) is given too.
        env = {**image_env(), **svc["environment"]}
        missing = SERVICE_SETTINGS[role] - set(env)
        assert not missing, f"{name} is not given {sorted(missing)}, which it reads"
        settings = load_settings({k: v or "" for k, v in env.items()}, service=role)
        assert settings.production, f"{name} must run in production mode"
    given = set(image_env()).union(
        *(svc["environment"] for n, svc in ours.items() if n not in HELPERS)
    )
    assert set(env_names()) <= given, f"no service is given {sorted(set(env_names()) - given)}"


def image_env() -> dict[str, str]:
    """The variables the Dockerfile's ENV instructions set (NAME=value form), comments skipped."""
    text = (ROOT / "Dockerfile").read_text()
    found: dict[str, str] = {}
    for block in re.findall(r"^ENV (.*?)(?<!\\)\n(?![ \t]*#)(?![ \t]+\S)", text, flags=re.M | re.S):
        for line in block.splitlines():
            line = line.strip().rstrip("\\").strip()
            if line and not line.startswith("#"):
                for item in line.split():
                    name, _, value = item.partition("=")
                    found[name] = value
    return found


def test_the_image_defaults_the_gateway_to_every_interface_and_compose_no_longer_says_so(
    tmp_path,
):
    assert image_env()["DARK_BIND"] == "0.0.0.0:8080"
    services = compose_config(tmp_path, PROFILES[0])["services"]
    assert "DARK_BIND" not in services["api"]["environment"]


@pytest.mark.parametrize("profiles", [(), *PROFILES], ids=lambda p: "-".join(p) or "none")
def test_each_service_is_given_only_the_settings_it_reads(tmp_path, profiles):
    services = compose_config(tmp_path, profiles)["services"]
    vault_tokens = {}
    for name, svc in services.items():
        if name not in ROLE_OF:
            continue
        role, env = ROLE_OF[name], svc.get("environment") or {}
        extra = set(env) - SERVICE_SETTINGS[role] - EXTRA_READS.get(role, set())
        assert not extra, f"{name} is given {sorted(extra)}, which it does not read"
        if env.get("VAULT_TOKEN"):
            vault_tokens[name] = env["VAULT_TOKEN"]
    # Only the onboarding service and the provisioner hold a Vault token, each its own.
    holders = {ROLE_OF[name] for name in vault_tokens}
    assert holders == {"onboarding"} | ({"provisioner"} if profiles else set()), vault_tokens
    for name, token in vault_tokens.items():
        wanted = REQUIRED_ENV[f"{ROLE_OF[name].upper()}_VAULT_TOKEN"]
        assert token == wanted, f"{name} holds another role's Vault token"
    assert set(services["flower"]["environment"]) == SERVICE_SETTINGS["flower"]
    for name, svc in services.items():
        if name in HELPERS:
            continue
        env = svc.get("environment") or {}
        assert not {"ONBOARDING_VAULT_TOKEN", "PROVISIONER_VAULT_TOKEN"} & set(env), name


def dockerfile_final_stage() -> list[str]:
    lines = (ROOT / "Dockerfile").read_text().splitlines()
    instructions = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    last_from = max(i for i, line in enumerate(instructions) if line.upper().startswith("FROM "))
    return instructions[last_from:]


def test_the_image_runs_as_a_non_root_user():
    stage = dockerfile_final_stage()
    args = dict(
        line.split(None, 1)[1].split("=", 1) for line in stage if line.upper().startswith("ARG ")
    )
    users = [line.split(None, 1)[1] for line in stage if line.upper().startswith("USER ")]
    assert users, "the final stage of the Dockerfile sets no USER"
    user = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], users[-1]).split(":")[0]
    assert user not in ("root", "0")
    assert user.isdigit(), "a numeric USER lets runtimes verify runAsNonRoot"


def test_no_secret_is_baked_into_the_image():
    text = (ROOT / "Dockerfile").read_text()
    declared = re.findall(r"^\s*(?:ENV|ARG)\s+(.*)$", text, flags=re.M)
    names = {m for decl in declared for m in re.findall(r"([A-Z_][A-Z0-9_]*)=", decl)}
    names |= {d.split("=")[0].strip() for d in declared if "=" not in d}
    secretish = {n for n in names if re.search("TOKEN|PASSWORD|SECRET|KEY|AUTH", n)}
    assert not secretish, f"the Dockerfile declares {secretish}"
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".env", ".run/", "secrets/", ".git/"} <= ignored


def test_make_env_writes_a_private_env_file_that_compose_accepts(tmp_path):
    demo, cloud = tmp_path / "demo.env", tmp_path / "cloud.env"
    for profile, path in [("demo", demo), ("cloud", cloud)]:
        made = subprocess.run(
            [sys.executable, "deploy/make_env.py", profile, "--output", str(path)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        )
        assert path.stat().st_mode & 0o077 == 0
        written = dict(
            line.split("=", 1) for line in path.read_text().splitlines() if re.match(r"[A-Z]", line)
        )
        # The image and the deployment label are names, not secrets: each is set, the rest random.
        assert written["DARK_DEPLOYMENT"], "DARK_DEPLOYMENT is required in production"
        for name in REQUIRED_ENV.keys() - {
            "DARK_VM_IMAGE",
            "DARK_DEPLOYMENT",
            "YC_SECURITY_GROUP_IDS",
        }:
            assert len(written[name]) >= 16 and written[name] not in made.stdout, name
    again = subprocess.run(
        [sys.executable, "deploy/make_env.py", "demo", "--output", str(demo)],
        cwd=ROOT,
        capture_output=True,
        check=False,
    )
    assert again.returncode != 0, "an existing .env is never overwritten without --force"

    result = run_compose(tmp_path, "config", "--format", "json", env={}, env_file=demo)
    assert result.returncode == 0, result.stderr
    config = json.loads(result.stdout)
    assert {"sim", "demo-provisioner", "vault-init"} <= set(config["services"])
    assert_every_queue_consumed_and_one_beat(service_commands(config), "make_env demo")
    for name in ("onboarding", "beat", "flower", "migrate", "demo-provisioner"):
        env = {k: v or "" for k, v in config["services"][name]["environment"].items()}
        assert load_settings(env, service=ROLE_OF[name]).production, name

    # The cloud file needs the operator's image id and security groups before Compose accepts it.
    operator = {"DARK_VM_IMAGE": "fd8abc", "YC_SECURITY_GROUP_IDS": "enpsg0123456789abcdef"}
    for name in operator:
        partial = {k: v for k, v in operator.items() if k != name}
        result = run_compose(tmp_path, "config", "--quiet", env=partial, env_file=cloud)
        assert result.returncode != 0 and name in result.stderr
    result = run_compose(tmp_path, "config", "--format", "json", env=operator, env_file=cloud)
    assert result.returncode == 0, result.stderr
    services = json.loads(result.stdout)["services"]
    assert {"api", "provisioner", "reconciler"} <= set(services) and "sim" not in services
    for name in ("onboarding", "beat", "flower", "migrate", "provisioner", "reconciler"):
        env = {k: v or "" for k, v in services[name]["environment"].items()}
        assert load_settings(env, service=ROLE_OF[name]).production, name
    assert services["provisioner"]["environment"]["YC_SA_KEY_FILE"] == "/run/secrets/yc-sa-key"
    for config_services in (config["services"], services):
        for name, svc in config_services.items():
            for key, value in (svc.get("environment") or {}).items():
                assert not str(value or "").startswith("#"), f"{name}: {key} took a comment"


# --- make run ---------------------------------------------------------------------------------


def test_every_routed_queue_has_a_worker_in_make_run_and_there_is_one_beat():
    commands = make_run.service_commands({"FLOWER_PORT": "5555"})
    # `python -m celery` there: the module name stands where the program name would.
    assert_every_queue_consumed_and_one_beat(commands, "make run")


def test_make_run_starts_flower_on_loopback_with_generated_basic_auth():
    env, generated = {"FLOWER_UNAUTHENTICATED_API": "true"}, {}
    make_run.flower_env(env, generated)
    user, _, password = env["FLOWER_BASIC_AUTH"].partition(":")
    assert user and len(password) >= 16
    assert generated["FLOWER_BASIC_AUTH"] == env["FLOWER_BASIC_AUTH"], "printed when generated"
    assert "FLOWER_UNAUTHENTICATED_API" not in env
    flower = make_run.service_commands(env)["flower"]
    assert celery_role(flower)[0] == "flower"
    assert "--address=127.0.0.1" in flower and f"--port={env['FLOWER_PORT']}" in flower
    assert not any(password in arg for arg in flower), "the password stays off the process list"

    given = {"FLOWER_BASIC_AUTH": "ops:chosen-password"}
    make_run.flower_env(given, generated := {})
    assert given["FLOWER_BASIC_AUTH"] == "ops:chosen-password" and not generated


def test_make_run_gives_each_process_only_what_it_reads_and_only_two_a_vault_token():
    env = {
        "PATH": "/usr/bin",
        **{name: f"value-of-{name}" for name in env_names()},
        "VAULT_TOKEN": "inherited-0123456789",
        "ONBOARDING_VAULT_TOKEN": "onb-0123456789abcdef",
        "PROVISIONER_VAULT_TOKEN": "prov-0123456789abcdef",
        "FLOWER_PORT": "5555",
        "YC_METADATA_ADDR": "127.0.0.1:1",
    }
    commands = make_run.service_commands(env)
    assert set(commands) == set(make_run.SERVICE_OF)
    for name in commands:
        role = make_run.SERVICE_OF[name]
        given = make_run.service_env(env, role)
        assert given["PATH"] == "/usr/bin", "the rest of the environment passes"
        ours = set(given) - {"PATH", "FLOWER_PORT", "YC_METADATA_ADDR"}
        assert ours <= SERVICE_SETTINGS[role], f"{name} is given {ours - SERVICE_SETTINGS[role]}"
        assert not {"ONBOARDING_VAULT_TOKEN", "PROVISIONER_VAULT_TOKEN"} & set(given), name
        expected = env.get(f"{role.upper()}_VAULT_TOKEN")
        assert given.get("VAULT_TOKEN") == expected, f"{name}: its own Vault token or none"
        assert ("FLOWER_PORT" in given) == (role == "flower"), name
    assert set(make_run.service_env(env, "flower")) == {
        "PATH",
        "DARK_ENV",
        "REDIS_URL",
        "REDIS_CA_FILE",  # the broker over TLS, or behind Sentinel: still only the broker
        "REDIS_SENTINEL_MASTER",
        "FLOWER_BASIC_AUTH",
        "FLOWER_PORT",
    }


@pytest.mark.slow
def test_make_run_sets_up_openbao_with_the_root_token_off_the_command_line_then_revokes_it(
    tmp_path, monkeypatch
):
    monkeypatch.setattr(make_run, "RUN", tmp_path)
    runner, env = make_run.Runner(), {"PATH": os.environ["PATH"], "VAULT_TOKEN": "inherited-x"}
    try:
        make_run._start_openbao(runner, env)
        ((_, bao),) = runner.procs
        cmdline = Path(f"/proc/{bao.pid}/cmdline").read_bytes().decode()
        environ = dict(
            item.split("=", 1)
            for item in Path(f"/proc/{bao.pid}/environ").read_bytes().decode().split("\0")
            if "=" in item
        )
        root = environ["BAO_DEV_ROOT_TOKEN_ID"]
        assert root not in cmdline and "root-token" not in cmdline
        assert "VAULT_TOKEN" not in env, "no token that could do more than a role is left"
        with pytest.raises(hvac.exceptions.Forbidden):
            hvac.Client(url=env["VAULT_ADDR"], token=root, timeout=5).auth.token.lookup_self()
        assert_role_tokens_are_scoped(env["VAULT_ADDR"], env, min_ttl=24 * 3600)
    finally:
        runner.stop()


# --- OpenBao: the shipped server config and the set-up script -------------------------------------


class ConfiguredOpenBao:
    """`bao server` with deploy/openbao/openbao.hcl, rewritten only for paths and loopback ports."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port, self.cluster_port = free_port(), free_port()
        self.addr = f"http://127.0.0.1:{self.port}"
        data = workdir / "raft"
        data.mkdir()
        hcl = (ROOT / "deploy/openbao/openbao.hcl").read_text()
        for shipped, local in [
            ("/openbao/file", str(data)),
            ("0.0.0.0:8200", f"127.0.0.1:{self.port}"),
            ("0.0.0.0:8201", f"127.0.0.1:{self.cluster_port}"),
            ("http://openbao:8200", self.addr),
            ("http://openbao:8201", f"http://127.0.0.1:{self.cluster_port}"),
        ]:
            assert shipped in hcl
            hcl = hcl.replace(shipped, local)
        (workdir / "openbao.hcl").write_text(hcl)
        self.proc = None
        self.start()

    def start(self) -> None:
        self.proc = spawn(
            [bao_binary(), "server", f"-config={self.workdir / 'openbao.hcl'}"],
            env={"HOME": str(self.workdir), "BAO_ADDR": "", "VAULT_ADDR": ""},
            log_path=self.workdir / "openbao.log",
        )

        def answers():
            assert self.proc.poll() is None, (self.workdir / "openbao.log").read_text()[-2000:]
            return requests.get(self.addr + "/v1/sys/seal-status", timeout=1).ok

        wait_until(answers, 30, what="OpenBao to answer")

    def restart(self) -> None:
        stop_process(self.proc)
        self.start()

    def stop(self) -> None:
        stop_process(self.proc)


@pytest.fixture
def configured_openbao(tmp_path):
    bao = ConfiguredOpenBao(tmp_path)
    yield bao
    bao.stop()


def role_tokens() -> dict[str, str]:
    return {
        "ONBOARDING_VAULT_TOKEN": "onb-" + os.urandom(16).hex(),
        "PROVISIONER_VAULT_TOKEN": "prov-" + os.urandom(16).hex(),
    }


def openbao_setup(bao: ConfiguredOpenBao, tokens: dict[str, str], *args: str, **env: str):
    return subprocess.run(
        [sys.executable, "-m", "deploy.openbao_setup", *args, "--wait", "30"],
        cwd=ROOT,
        env={"PATH": os.environ["PATH"], "VAULT_ADDR": bao.addr, **tokens, **env},
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def assert_role_tokens_are_scoped(
    addr: str, tokens: dict[str, str], min_ttl: int = 300 * 24 * 3600
) -> None:
    """Each role's token does its job and nothing of the other role's (the matrix on the project's
    own adapters is tests/integration/test_vault_policies.py)."""
    onboarding = hvac.Client(url=addr, token=tokens["ONBOARDING_VAULT_TOKEN"], timeout=10)
    provisioner = hvac.Client(url=addr, token=tokens["PROVISIONER_VAULT_TOKEN"], timeout=10)
    onboarding.secrets.kv.v2.create_or_update_secret("tenants/deploy-test", {"k": "v"})
    provisioner.secrets.kv.v2.read_secret_version(
        "tenants/deploy-test", raise_on_deleted_version=True
    )
    data = provisioner.secrets.transit.generate_data_key("dark-bundles", "plaintext")["data"]
    provisioner.secrets.transit.decrypt_data("dark-bundles", data["ciphertext"])
    with pytest.raises(hvac.exceptions.Forbidden):
        provisioner.secrets.kv.v2.create_or_update_secret("tenants/deploy-test", {"k": "w"})
    with pytest.raises(hvac.exceptions.Forbidden):
        onboarding.secrets.transit.decrypt_data("dark-bundles", data["ciphertext"])
    onboarding.secrets.kv.v2.delete_metadata_and_all_versions("tenants/deploy-test")
    for client in (onboarding, provisioner):
        with pytest.raises(hvac.exceptions.Forbidden):
            client.secrets.kv.v2.create_or_update_secret("elsewhere", {"k": "v"})
        with pytest.raises(hvac.exceptions.Forbidden):
            client.secrets.transit.rotate_key("dark-bundles")
        with pytest.raises(hvac.exceptions.Forbidden):
            client.sys.list_mounted_secrets_engines()
        assert client.auth.token.lookup_self()["data"]["ttl"] > min_ttl


@pytest.mark.slow
def test_demo_openbao_init_unseals_configures_and_unseals_again_after_a_restart(
    configured_openbao, tmp_path
):
    bao, tokens = configured_openbao, role_tokens()
    keys = tmp_path / "keys" / "keys.json"
    keys.parent.mkdir()
    first = openbao_setup(bao, tokens, "--demo-keys", str(keys))
    assert first.returncode == 0, first.stderr
    assert keys.stat().st_mode & 0o077 == 0, "the demo's keys file is private"
    stored = json.loads(keys.read_text())
    for secret in [stored["root_token"], *stored["unseal_keys_b64"]]:
        assert secret not in first.stdout + first.stderr
    assert_role_tokens_are_scoped(bao.addr, tokens)

    again = openbao_setup(bao, tokens, "--demo-keys", str(keys))
    assert again.returncode == 0, again.stderr
    assert "renewed the onboarding token" in again.stdout
    assert "renewed the provisioner token" in again.stdout

    bao.restart()
    assert hvac.Client(url=bao.addr).sys.read_seal_status()["sealed"]
    after_restart = openbao_setup(bao, tokens, "--demo-keys", str(keys))
    assert after_restart.returncode == 0, after_restart.stderr
    assert_role_tokens_are_scoped(bao.addr, tokens)


@pytest.mark.slow
def test_deployment_openbao_setup_leaves_init_and_unseal_to_the_operator(configured_openbao):
    bao, tokens = configured_openbao, role_tokens()
    uninitialised = openbao_setup(bao, tokens, OPENBAO_SETUP_TOKEN="whatever")
    assert uninitialised.returncode == 2
    assert "bao operator init" in uninitialised.stderr
    assert hvac.Client(url=bao.addr).sys.is_initialized() is False, "it must not initialise"

    # The operator initialises with the usual 5 shares / threshold 3, and unseals later.
    admin = hvac.Client(url=bao.addr, timeout=120)
    init = admin.sys.initialize(secret_shares=5, secret_threshold=3)
    sealed = openbao_setup(bao, tokens, OPENBAO_SETUP_TOKEN=init["root_token"])
    assert sealed.returncode == 2
    assert "bao operator unseal" in sealed.stderr

    admin.sys.submit_unseal_keys(init["keys"][:3])
    no_admin_token = openbao_setup(bao, tokens)
    assert no_admin_token.returncode == 2
    assert "OPENBAO_SETUP_TOKEN" in no_admin_token.stderr

    done = openbao_setup(bao, tokens, OPENBAO_SETUP_TOKEN=init["root_token"])
    assert done.returncode == 0, done.stderr
    assert init["root_token"] not in done.stdout + done.stderr
    assert_role_tokens_are_scoped(bao.addr, tokens)


# --- the demo's simulator launcher ----------------------------------------------------------------


def test_demo_sim_publishes_its_certificate_at_a_fixed_path(tmp_path):
    state = tmp_path / "sim"
    state.mkdir()
    proc = spawn(
        [sys.executable, "-m", "deploy.demo_sim", "--state-dir", str(state)],
        env={"YC_IAM_TOKEN": "t1.demo-" + os.urandom(8).hex()},
        log_path=tmp_path / "demo_sim.log",
        stdout=subprocess.PIPE,
    )
    try:
        info = json.loads(proc.stdout.readline())
        assert info["yc_root_cert"] == str(state / "yc-root.pem")
        assert "yc_iam_token" not in info
        assert json.loads((state / "sim.json").read_text()) == info
        assert (state / "yc-root.pem").read_text().startswith("-----BEGIN CERTIFICATE-----")
        assert requests.get(info["admin_url"] + "/health", timeout=5).ok
    finally:
        stop_process(proc)
    assert proc.returncode == 0, "SIGTERM is passed on to the simulator, which stops cleanly"


def test_demo_sim_refuses_to_start_without_the_clouds_token(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "YC_IAM_TOKEN"}
    result = subprocess.run(
        [sys.executable, "-m", "deploy.demo_sim", "--state-dir", str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode != 0 and "YC_IAM_TOKEN" in result.stderr


# --- deploy/docker-compose.workers.yml: workers on other hosts ------------------------------------

WORKERS_FILE = ROOT / "deploy" / "docker-compose.workers.yml"
WORKERS_ENV = {
    "DATABASE_URL": "postgresql://dark:pw@pg.example:6432/dark?sslmode=verify-full"
    "&sslrootcert=system",
    "REDIS_URL": "rediss://:pw@redis.example:6380/0",
    "VAULT_ADDR": "https://vault.example:8200",
    "PROVISIONER_VAULT_TOKEN": REQUIRED_ENV["PROVISIONER_VAULT_TOKEN"],
    "DARK_VM_IMAGE": REQUIRED_ENV["DARK_VM_IMAGE"],
    "YC_SECURITY_GROUP_IDS": REQUIRED_ENV["YC_SECURITY_GROUP_IDS"],
    "YC_FOLDER_ID": "b1gfolder0123456789",
    "YC_SUBNET_ID": "e9bsubnet0123456789",
    "DARK_DEPLOYMENT": "compose-test",
}


def workers_config(tmp_path: Path, env: dict, profiles=()) -> subprocess.CompletedProcess:
    empty = tmp_path / "empty.env"
    empty.write_text("")
    keep = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "DOCKER_CONFIG")}
    argv = [*compose_command(), "--file", str(WORKERS_FILE), "--env-file", str(empty)]
    for profile in profiles:
        argv += ["--profile", profile]
    return subprocess.run(
        [*argv, "config", "--format", "json"],
        capture_output=True,
        text=True,
        env={**keep, **env},
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("profiles", [(), ("reconcile",)], ids=lambda p: "-".join(p) or "none")
def test_the_worker_only_compose_file_runs_workers_on_remote_tls_state(tmp_path, profiles):
    result = workers_config(tmp_path, WORKERS_ENV, profiles)
    assert result.returncode == 0, result.stderr
    services = json.loads(result.stdout)["services"]
    # No state of its own: Postgres, Redis and Vault are remote; no gateway either.
    assert set(services) == ({"provisioner"} | ({"reconciler", "beat"} if profiles else set()))
    for name, svc in services.items():
        env = {k: v or "" for k, v in svc["environment"].items()}
        role = "provisioner" if name == "provisioner" else name
        assert set(env) <= SERVICE_SETTINGS[role], name
        if role != "beat":
            settings = load_settings({**env, "YC_SA_KEY_FILE": "/k.json"}, service=role)
            assert settings.production and settings.db_require_tls, name
    # The same queue check as the main file: every routed queue consumed, one beat.
    if profiles:
        assert_every_queue_consumed_and_one_beat(
            service_commands(json.loads(result.stdout)), "workers"
        )


def test_the_worker_only_compose_file_refuses_a_plain_text_database_url(tmp_path):
    plain = {**WORKERS_ENV, "DATABASE_URL": "postgresql://dark:pw@pg.example:6432/dark"}
    services = json.loads(workers_config(tmp_path, plain).stdout)["services"]
    env = {k: v or "" for k, v in services["provisioner"]["environment"].items()}
    with pytest.raises(SettingsError, match="sslmode=verify-full"):
        load_settings({**env, "YC_SA_KEY_FILE": "/k.json"}, service="provisioner")
