"""`python -m devtools.rotate_bundle_key` against a real Postgres and a real OpenBao: the command
an operator runs rotates the key, every bundle still decrypts, and nothing secret is printed."""

import os
import subprocess
import sys
from pathlib import Path

from shared.adapters.bundles import EnvelopeBundleStore
from tests.integration.test_bundles import (
    canary,
    make_bundle,
    min_decryption_version,
    private_pool,  # noqa: F401 (a fixture)
    put_claimed,
    raw_row,
    transit_for,
)

ROOT = Path(__file__).resolve().parents[2]


def run_command(database_url: str, bao) -> subprocess.CompletedProcess:
    env = {
        "PATH": os.environ.get("PATH", ""),
        "DATABASE_URL": database_url,
        "VAULT_ADDR": bao.addr,
        "VAULT_TOKEN": bao.token,
        "DARK_BUNDLE_KEY": "dark-bundles",
    }
    return subprocess.run(
        [sys.executable, "-m", "devtools.rotate_bundle_key"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_command_rotates_the_key_and_every_bundle_still_decrypts(
    private_openbao,
    private_pool,  # noqa: F811
):
    transit = transit_for(private_openbao)
    store = EnvelopeBundleStore(private_pool, transit)
    secrets_put = {f"tenant-{i}": canary() for i in range(3)}
    for tenant, value in secrets_put.items():
        put_claimed(store, tenant, make_bundle(value))

    done = run_command(private_pool.conninfo, private_openbao)

    assert done.returncode == 0, done.stderr
    assert "now at version 2: 3 bundle(s) re-wrapped" in done.stdout, done.stdout
    for tenant, value in secrets_put.items():
        assert store.get(tenant) == make_bundle(value)
        assert raw_row(private_pool, tenant)[0].startswith("vault:v2:")
        assert value not in done.stdout + done.stderr
    assert private_openbao.token not in done.stdout + done.stderr
    assert min_decryption_version(private_openbao) == 2


def test_the_command_fails_with_a_message_when_postgres_is_not_there(private_openbao):
    done = run_command("postgresql://postgres@127.0.0.1:1/nowhere", private_openbao)

    assert done.returncode == 1
    assert "bundle key rotation did not finish" in done.stderr
    assert private_openbao.token not in done.stdout + done.stderr
