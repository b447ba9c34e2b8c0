"""Initialise, unseal and configure the OpenBao of docker-compose.yml; safe to run again and again.

Deployment (the `vault-setup` service, run by an operator; nothing is initialised for them):

    docker compose up -d openbao
    docker compose exec openbao bao operator init      # keep the unseal keys and root token offline
    docker compose exec openbao bao operator unseal    # as many times as the threshold asks
    docker compose run --rm -e OPENBAO_SETUP_TOKEN=<root or admin token> vault-setup

Demo (the `vault-init` service of the `demo` profile, run on every `up`): `--demo-keys FILE`
initialises OpenBao with a single unseal key and keeps that key and the root token in FILE, on a
volume only this service mounts, so that it can unseal again after a restart. That is a demo's
convenience and not key custody: anyone who can read the volume owns the Vault.

Either way it then makes sure of: KV v2 at VAULT_KV_MOUNT, transit at VAULT_TRANSIT_MOUNT, the
bundle key DARK_BUNDLE_KEY, one policy per role (least privilege, docs/ARCHITECTURE.md#secrets):

    dark-onboarding   tenant secrets: create, read, update; delete every version (offboarding)
    dark-provisioner  tenant secrets: read; the bundle key: datakey and decrypt
    dark-rotation     the bundle key: rotate, read, rewrap, raise min_decryption_version

and one token per service that talks to Vault: ONBOARDING_VAULT_TOKEN and PROVISIONER_VAULT_TOKEN
from .env, each created with that id and its role's policy only, or renewed when it exists (the
services never renew them themselves). The gateway, the reconciler, beat and Flower get no Vault
token. No token is made for rotation: an operator mints a short-lived one when rotating
(docs/OPERATIONS.md). The policy `dark-orchestrator` of earlier versions (one token for all) is
deleted, which leaves a token made for it powerless.

Exit status 0 when OpenBao is ready for the services, 2 when an operator has to act first (the
message says what to do), 1 on any other failure. Secrets are never printed.
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

import hvac
import requests
from hvac.exceptions import Forbidden, InvalidPath, VaultError

from shared.adapters.vault_transit import TransitKeys
from shared.settings import Settings, load_settings

LEGACY_POLICY = "dark-orchestrator"  # one policy for every service, before per-role policies
TOKEN_TTL = "8760h"  # max_lease_ttl in deploy/openbao/openbao.hcl
INIT_TIMEOUT_SECS = 120
# The role whose token each variable names (read by this script only, never by a service).
ROLE_TOKENS = {"onboarding": "ONBOARDING_VAULT_TOKEN", "provisioner": "PROVISIONER_VAULT_TOKEN"}
ROTATION = "rotation"
SETTINGS_USED = (
    "VAULT_ADDR",
    "VAULT_NAMESPACE",
    "VAULT_KV_MOUNT",
    "VAULT_TRANSIT_MOUNT",
    "DARK_BUNDLE_KEY",
)


class OperatorActionNeeded(Exception):
    """OpenBao is in a state only an operator may change (uninitialised, sealed, no token)."""


def policy_name(role: str) -> str:
    return f"dark-{role}"


def policies(settings: Settings) -> dict[str, str]:
    """Each role's policy (HCL) by role: exactly what its adapters call, nothing more."""
    kv, transit = settings.vault_kv_mount, settings.vault_transit_mount
    key = settings.bundle_key_name
    return {
        "onboarding": f"""\
# Tenant secrets: write (check-and-set), read back (presence and version), offboard.
path "{kv}/data/tenants/*" {{
  capabilities = ["create", "read", "update"]
}}
path "{kv}/metadata/tenants/*" {{
  capabilities = ["delete"]
}}
""",
        "provisioner": f"""\
# Tenant secrets: read only.
path "{kv}/data/tenants/*" {{
  capabilities = ["read"]
}}
# Bundle data keys: generate and unwrap. No rewrap, rotate, key configuration or export.
path "{transit}/datakey/plaintext/{key}" {{
  capabilities = ["update"]
}}
path "{transit}/decrypt/{key}" {{
  capabilities = ["update"]
}}
""",
        ROTATION: f"""\
# devtools/rotate_bundle_key.py: a new key version, every data key re-wrapped, old versions retired.
# No tenant secrets, no decrypt, no datakey: rewrap never exposes a data key.
path "{transit}/keys/{key}/rotate" {{
  capabilities = ["update"]
}}
path "{transit}/keys/{key}" {{
  capabilities = ["read"]
}}
path "{transit}/keys/{key}/config" {{
  capabilities = ["update"]
}}
path "{transit}/rewrap/{key}" {{
  capabilities = ["update"]
}}
""",
    }


def role_tokens_from_env(environ: dict[str, str]) -> dict[str, str]:
    """The services' token ids .env gives, by role; a role whose variable is unset gets none."""
    tokens = {}
    for role, name in ROLE_TOKENS.items():
        value = environ.get(name, "").strip()
        if not value:
            continue
        if len(value) < 16:
            raise SystemExit(f"{name}: must be at least 16 characters")
        tokens[role] = value
    if len(set(tokens.values())) < len(tokens):
        raise SystemExit(f"{' and '.join(ROLE_TOKENS.values())} must differ: one token per service")
    return tokens


def configure(
    client: hvac.Client, settings: Settings, tokens: dict[str, str], ttl: str = TOKEN_TTL
) -> None:
    """Engines, the bundle key, every role's policy and the given roles' tokens (by role)."""
    ensure_engines(client, settings)
    for role, hcl in policies(settings).items():
        client.sys.create_or_update_policy(name=policy_name(role), policy=hcl)
    if LEGACY_POLICY in (client.sys.list_policies().get("data") or {}).get("policies", []):
        client.sys.delete_policy(LEGACY_POLICY)
        print(f"deleted the policy {LEGACY_POLICY} of earlier versions (one token for all)")
    for role, token in tokens.items():
        ensure_service_token(client, role, token, ttl)


def wait_for_server(client: hvac.Client, timeout: float) -> dict:
    """The seal status once the server answers at all (uninitialised and sealed included)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return client.sys.read_seal_status()
        except (requests.RequestException, VaultError) as exc:
            if time.monotonic() > deadline:
                raise SystemExit(
                    f"OpenBao at {client.url} did not answer ({type(exc).__name__})"
                ) from None
            time.sleep(1)


def wait_until_active(addr: str, timeout: float) -> None:
    """After unsealing, raft elects this node leader; until then requests are refused."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            # 200 = initialised, unsealed, active (standby, sealed and uninitialised are not).
            if requests.get(f"{addr}/v1/sys/health", timeout=5).status_code == 200:
                return
        except requests.RequestException:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"OpenBao at {addr} unsealed but did not become active")
        time.sleep(0.5)


def _write_private(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def demo_init_and_unseal(client: hvac.Client, status: dict, keys_file: Path) -> str:
    """Initialise (once) and unseal with the demo's stored key; returns the root token."""
    if not status["initialized"]:
        if keys_file.exists():
            raise SystemExit(
                f"OpenBao is uninitialised but {keys_file} exists: it belongs to another OpenBao "
                "(was the openbao-data volume removed?). Remove the demo keys volume too."
            )
        result = client.sys.initialize(secret_shares=1, secret_threshold=1)
        stored = {"unseal_keys_b64": result["keys_base64"], "root_token": result["root_token"]}
        _write_private(keys_file, stored)
        print("demo: OpenBao initialised with one unseal key (kept on the demo keys volume)")
    elif not keys_file.exists():
        raise SystemExit(
            f"OpenBao is initialised, but not by the demo ({keys_file} is missing): unseal and "
            "configure it as a deployment (see vault-setup in docker-compose.yml)"
        )
    stored = json.loads(keys_file.read_text())
    if client.sys.read_seal_status()["sealed"]:
        client.sys.submit_unseal_keys(stored["unseal_keys_b64"])
        print("demo: OpenBao unsealed")
    return stored["root_token"]


def check_ready_for_operator(status: dict, addr: str) -> str:
    """Deployment: refuse to touch an uninitialised or sealed server; returns the admin token."""
    if not status["initialized"]:
        raise OperatorActionNeeded(
            f"OpenBao at {addr} is not initialised. Initialise it once, keeping the unseal keys "
            "and the root token offline: docker compose exec openbao bao operator init"
        )
    if status["sealed"]:
        raise OperatorActionNeeded(
            f"OpenBao at {addr} is sealed. Unseal it ({status.get('t', '?')} key shares): "
            "docker compose exec openbao bao operator unseal"
        )
    token = os.environ.get("OPENBAO_SETUP_TOKEN", "").strip()
    if not token:
        raise OperatorActionNeeded(
            "OPENBAO_SETUP_TOKEN is not set: pass a root or admin token for this run only, "
            "e.g. docker compose run --rm -e OPENBAO_SETUP_TOKEN=... vault-setup"
        )
    return token


def ensure_engines(client: hvac.Client, settings: Settings) -> None:
    mounts = client.sys.list_mounted_secrets_engines()
    mounts = mounts.get("data", mounts)
    kv = mounts.get(settings.vault_kv_mount + "/")
    if kv is None:
        client.sys.enable_secrets_engine(
            "kv", path=settings.vault_kv_mount, options={"version": "2"}
        )
        print(f"enabled KV v2 at {settings.vault_kv_mount}/")
    elif kv.get("type") != "kv" or (kv.get("options") or {}).get("version") != "2":
        raise SystemExit(f"{settings.vault_kv_mount}/ is mounted, but not as KV version 2")
    transit = mounts.get(settings.vault_transit_mount + "/")
    if transit is None:
        client.sys.enable_secrets_engine("transit", path=settings.vault_transit_mount)
        print(f"enabled transit at {settings.vault_transit_mount}/")
    elif transit.get("type") != "transit":
        raise SystemExit(f"{settings.vault_transit_mount}/ is mounted, but not as transit")
    TransitKeys(
        client, mount=settings.vault_transit_mount, key_name=settings.bundle_key_name
    ).ensure_key()


def ensure_service_token(client: hvac.Client, role: str, token: str, ttl: str = TOKEN_TTL) -> None:
    """A service's token with exactly its role's policy: created with the given id, or renewed."""
    name, wanted = ROLE_TOKENS.get(role, role), policy_name(role)
    try:
        existing = client.auth.token.lookup(token)["data"]
    except (Forbidden, InvalidPath):
        existing = None
    if existing is None:
        client.auth.token.create_orphan(
            id=token,
            policies=[wanted],
            ttl=ttl,
            renewable=True,
            display_name=f"dark-{role}",
            meta={"role": role},
        )
        print(f"created the {role} token (policy {wanted}, ttl {ttl})")
        return
    policies = set(existing.get("policies") or []) - {"default"}
    if policies != {wanted}:
        raise SystemExit(
            f"{name} already exists with policies {sorted(policies)}, not [{wanted!r}]; "
            f"use a token made for the {role} service"
        )
    client.auth.token.renew(token, increment=ttl)
    print(f"renewed the {role} token")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.openbao_setup", description=__doc__)
    parser.add_argument(
        "--demo-keys",
        type=Path,
        help="demo only: initialise/unseal automatically, keeping the key and root token here",
    )
    parser.add_argument("--wait", type=float, default=60, help="seconds to wait for OpenBao")
    args = parser.parse_args(argv)
    settings = load_settings({name: os.environ.get(name, "") for name in SETTINGS_USED})
    tokens = role_tokens_from_env(dict(os.environ))
    client = hvac.Client(
        url=settings.vault_addr,
        token="",  # not None: hvac would fall back to $VAULT_TOKEN or ~/.vault-token
        namespace=settings.vault_namespace,
        # Initialising raft storage takes seconds, and its answer (the keys) comes only once.
        timeout=INIT_TIMEOUT_SECS,
    )
    try:
        status = wait_for_server(client, args.wait)
        if args.demo_keys:
            client.token = demo_init_and_unseal(client, status, args.demo_keys)
        else:
            client.token = check_ready_for_operator(status, settings.vault_addr)
        wait_until_active(settings.vault_addr, args.wait)
        configure(client, settings, tokens)
        for role, name in ROLE_TOKENS.items():
            if role not in tokens:
                print(f"{name} is not set: no token created for the {role} service")
    except OperatorActionNeeded as exc:
        print(f"openbao_setup: {exc}", file=sys.stderr)
        return 2
    except (VaultError, requests.RequestException) as exc:
        # The class only: server text can echo request data.
        print(f"openbao_setup: OpenBao refused a step ({type(exc).__name__})", file=sys.stderr)
        return 1
    print(f"OpenBao at {settings.vault_addr} is ready for dark-orchestrator")
    return 0


if __name__ == "__main__":
    sys.exit(main())
