"""Issue 14, item 2: the host playbook in deploy/ansible/.

`ansible-playbook --syntax-check` and `ansible-lint` (its production profile, offline: only
ansible.builtin modules, so no Galaxy download) pass on the playbook. The role's env-writing tasks
run for real on localhost with the example vault's values: the file is private, carries every
variable of deploy/compose.env.example, takes each secret from its vault_ variable, and Compose
accepts it with settings that pass the production checks. The example's CHANGE-ME secrets are
refused before anything is shipped, and the refusal names the variable, never the value.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from shared.settings import load_settings
from tests.integration.test_deployment import ROLE_OF, compose_command
from tests.support.processes import ROOT, VENV_BIN

PLAYBOOK_DIR = ROOT / "deploy" / "ansible"
GROUP_VARS = PLAYBOOK_DIR / "group_vars" / "all" / "main.yml"
VAULT_EXAMPLE = PLAYBOOK_DIR / "group_vars" / "all" / "vault.yml.example"
NAME = re.compile(r"^([A-Z_][A-Z0-9_]*)=(.*)$")
# What an operator sets for the cloud profile (the example vault has no service-account key).
CLOUD_VARS = {
    "dark_profile": "cloud",
    "dark_vm_image": "fd8image0123456789",
    "dark_security_group_ids": "enpsg0123456789abcdef",
}


def ansible_env(tmp_path: Path) -> dict[str, str]:
    home = tmp_path / "ansible-home"
    return {
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}",
        "HOME": str(tmp_path),  # nothing of ansible or ansible-lint lands in the real home
        "ANSIBLE_HOME": str(home),
        "ANSIBLE_LOCAL_TEMP": str(home / "tmp"),
        "ANSIBLE_CONFIG": str(PLAYBOOK_DIR / "ansible.cfg"),
        "ANSIBLE_ROLES_PATH": str(PLAYBOOK_DIR / "roles"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_FORCE_COLOR": "0",
    }


def run_role_tasks(tmp_path: Path, tasks_from: str, extra: dict) -> subprocess.CompletedProcess:
    """The dark role's `tasks_from` file on localhost, with the deployment's group_vars and the
    example vault as variables (as a deploy reads them), and `extra` over them."""
    play = tmp_path / "play.yml"
    play.write_text(
        yaml.safe_dump(
            [
                {
                    "name": "One tasks file of the dark role",
                    "hosts": "localhost",
                    "gather_facts": False,
                    "tasks": [
                        {
                            "name": "Include it",
                            "ansible.builtin.include_role": {
                                "name": "dark",
                                "tasks_from": tasks_from,
                            },
                        }
                    ],
                }
            ]
        )
    )
    extra_file = tmp_path / "extra.json"
    # The tests' own Python runs the modules: no interpreter discovery on the test machine.
    extra_file.write_text(json.dumps({"ansible_python_interpreter": sys.executable} | extra))
    return subprocess.run(
        [
            str(VENV_BIN / "ansible-playbook"),
            "--inventory",
            "localhost,",
            "--connection",
            "local",
            "--extra-vars",
            f"@{GROUP_VARS}",
            "--extra-vars",
            f"@{VAULT_EXAMPLE}",
            "--extra-vars",
            f"@{extra_file}",
            str(play),
        ],
        capture_output=True,
        text=True,
        env=ansible_env(tmp_path),
        timeout=120,
        check=False,
    )


def names_and_values(text: str) -> dict[str, str]:
    return dict(m.groups() for line in text.splitlines() if (m := NAME.match(line)))


def test_the_playbook_passes_syntax_check(tmp_path):
    result = subprocess.run(
        [
            str(VENV_BIN / "ansible-playbook"),
            "--syntax-check",
            "--inventory",
            "inventory.example.ini",
            "site.yml",
        ],
        cwd=PLAYBOOK_DIR,
        capture_output=True,
        text=True,
        env=ansible_env(tmp_path),
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_playbook_passes_ansible_lint_in_its_production_profile(tmp_path):
    config = yaml.safe_load((PLAYBOOK_DIR / ".ansible-lint").read_text())
    assert config["profile"] == "production" and config["offline"] is True
    result = subprocess.run(
        [str(VENV_BIN / "ansible-lint"), "--offline", "--nocolor"],
        cwd=PLAYBOOK_DIR,
        capture_output=True,
        text=True,
        env=ansible_env(tmp_path) | {"XDG_CACHE_HOME": str(tmp_path / "cache")},
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Profile 'production' was required, and it passed" in result.stdout + result.stderr


def test_the_playbook_uses_only_builtin_modules_so_no_collection_is_downloaded():
    module_key = re.compile(r"^\s*-?\s*([a-z_]+\.[a-z_]+\.[a-z_0-9]+):", re.M)
    used = set()
    for path in [PLAYBOOK_DIR / "site.yml", *PLAYBOOK_DIR.glob("roles/*/tasks/*.yml")]:
        used |= set(module_key.findall(path.read_text()))
    assert used, "no module found: the pattern no longer matches the task files"
    assert {name for name in used if not name.startswith("ansible.builtin.")} == set()
    assert not list(PLAYBOOK_DIR.rglob("requirements.yml")), "a Galaxy requirements file"


@pytest.mark.parametrize("profile", ["demo", "cloud"])
def test_the_env_file_is_private_complete_takes_secrets_from_the_vault_and_compose_accepts_it(
    tmp_path, profile
):
    release = tmp_path / "release"
    release.mkdir()
    extra = {"dark_release_dir": str(release), "dark_root": "/opt/dark-orchestrator"}
    extra |= CLOUD_VARS if profile == "cloud" else {}
    result = run_role_tasks(tmp_path, "env.yml", extra)
    assert result.returncode == 0, result.stdout + result.stderr
    env_file = release / ".env"
    assert env_file.stat().st_mode & 0o777 == 0o600

    written = names_and_values(env_file.read_text())
    example = names_and_values((ROOT / "deploy" / "compose.env.example").read_text())
    assert set(example) <= set(written), f"missing {sorted(set(example) - set(written))}"
    assert written["COMPOSE_PROFILES"] == profile and written["DARK_ENV"] == "production"
    vault = yaml.safe_load(VAULT_EXAMPLE.read_text())
    for name in (
        "POSTGRES_PASSWORD",
        "REDIS_PASSWORD",
        "ONBOARDING_VAULT_TOKEN",
        "PROVISIONER_VAULT_TOKEN",
        "DARK_API_TOKENS",
        "DARK_ONBOARDING_TOKENS",
        "DARK_SESSION_SECRET",
        "FLOWER_BASIC_AUTH",
    ):
        variable = "vault_dark_" + name.lower().removeprefix("dark_")
        assert written[name] == vault[variable], name
        assert written[name] not in result.stdout + result.stderr, f"{name} was logged"
    if profile == "demo":
        assert written["YC_IAM_TOKEN"] == vault["vault_dark_yc_iam_token"]
    else:
        assert (
            written["YC_IAM_TOKEN"] == "" and written["YC_SA_KEY_FILE"] == "/run/secrets/yc-sa-key"
        )
        assert written["YC_SA_KEY_PATH"] == "/opt/dark-orchestrator/secrets/yc-sa-key.json"

    keep = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "DOCKER_CONFIG")}
    config = subprocess.run(
        [
            *compose_command(),
            "--project-directory",
            str(ROOT),
            "--file",
            str(ROOT / "docker-compose.yml"),
            "--env-file",
            str(env_file),
            "config",
            "--format",
            "json",
        ],
        capture_output=True,
        text=True,
        env=keep,
        timeout=60,
        check=False,
    )
    assert config.returncode == 0, config.stderr
    services = json.loads(config.stdout)["services"]
    workers = ["provisioner", "reconciler"] if profile == "cloud" else ["demo-provisioner"]
    for name in ["onboarding", "beat", "flower", "migrate", *workers]:
        env = {k: v or "" for k, v in services[name]["environment"].items()}
        assert load_settings(env, service=ROLE_OF[name]).production, name


def test_the_example_vault_values_are_refused_by_name_without_printing_them(tmp_path):
    result = run_role_tasks(tmp_path, "checks.yml", {})
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "dark_postgres_password (vault_dark_postgres_password" in output
    vault = yaml.safe_load(VAULT_EXAMPLE.read_text())
    for name, value in vault.items():
        assert str(value) not in output, f"{name} was printed"


def test_real_looking_secrets_pass_the_checks(tmp_path):
    vault = yaml.safe_load(VAULT_EXAMPLE.read_text())
    real = {name: str(value).replace("CHANGE-ME", "f00d") for name, value in vault.items()}
    result = run_role_tasks(tmp_path, "checks.yml", real)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_cloud_deploy_without_its_service_account_key_is_refused(tmp_path):
    vault = yaml.safe_load(VAULT_EXAMPLE.read_text())
    real = {name: str(value).replace("CHANGE-ME", "f00d") for name, value in vault.items()}
    result = run_role_tasks(tmp_path, "checks.yml", real | CLOUD_VARS)
    assert result.returncode != 0
    assert "the cloud profile needs dark_yc_sa_key_json" in result.stdout + result.stderr
