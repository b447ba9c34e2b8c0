"""Least privilege against a real OpenBao (docs/ARCHITECTURE.md#secrets): deploy/openbao_setup.py's
policies, tried through the project's own adapters with each role's token. Each role can do exactly
its job; everything else is a 403, which the adapters report as the backend refusing (never as
"not onboarded")."""

import secrets

import hvac
import pytest

from deploy.openbao_setup import LEGACY_POLICY, ROLE_TOKENS, configure, policy_name
from shared.adapters.vault_client import vault_client
from shared.adapters.vault_kv import HvacTenantSecrets
from shared.adapters.vault_transit import TransitKeys
from shared.domain.errors import BundleBackendUnavailable, SecretsBackendUnavailable
from shared.domain.secrets import Secret, TenantSecrets
from shared.settings import Settings

KEY = "dark-bundles"


@pytest.fixture
def roles(private_openbao):
    """The set-up run with the dev server's root token; the role tokens by role, plus a short-lived
    token of the rotation policy as an operator would mint one."""
    root = private_openbao.client()
    root.sys.create_or_update_policy(
        name=LEGACY_POLICY, policy='path "secret/*" { capabilities = ["read"] }'
    )
    tokens = {role: f"{role}-" + secrets.token_hex(16) for role in ROLE_TOKENS}
    configure(root, Settings(), tokens, ttl="1h")
    rotation = root.auth.token.create(policies=[policy_name("rotation")], ttl="10m")
    tokens["rotation"] = rotation["auth"]["client_token"]
    return tokens


def kv(bao, token: str) -> HvacTenantSecrets:
    return HvacTenantSecrets(vault_client(Settings(vault_addr=bao.addr, vault_token=token)))


def transit(bao, token: str) -> TransitKeys:
    client = vault_client(Settings(vault_addr=bao.addr, vault_token=token))
    return TransitKeys(client, key_name=KEY)


def tenant_secrets() -> TenantSecrets:
    return TenantSecrets(
        claude_oauth_token=Secret("sk-ant-oat01-canary-" + secrets.token_hex(8)),
        nks_pat=Secret("nks-canary-" + secrets.token_hex(8)),
        forges=(),
    )


def refused(exc: pytest.ExceptionInfo) -> bool:
    return "Forbidden" in str(exc.value)


def test_each_role_has_exactly_its_policy_and_the_old_shared_policy_is_gone(private_openbao, roles):
    root = private_openbao.client()
    for role in ROLE_TOKENS:
        looked_up = root.auth.token.lookup(roles[role])["data"]
        assert set(looked_up["policies"]) - {"default"} == {policy_name(role)}
        assert looked_up["renewable"] is True
    assert LEGACY_POLICY not in root.sys.list_policies()["data"]["policies"]


def test_the_onboarding_token_writes_reads_and_offboards_tenant_secrets_only(
    private_openbao, roles
):
    store, tenant, stored = kv(private_openbao, roles["onboarding"]), "acme", tenant_secrets()
    assert store.write(tenant, stored, cas=0) == 1
    assert store.read(tenant).nks_pat == stored.nks_pat
    presence = store.presence(tenant)
    assert presence is not None and presence.version == 1
    assert store.write(tenant, stored, cas=1) == 2
    store.delete(tenant)
    assert store.presence(tenant) is None

    keys = transit(private_openbao, roles["onboarding"])
    with pytest.raises(BundleBackendUnavailable) as exc:
        keys.data_key()
    assert refused(exc)
    with pytest.raises(BundleBackendUnavailable) as exc:
        keys.unwrap(transit(private_openbao, roles["provisioner"]).data_key()[1])
    assert refused(exc)


def test_the_provisioner_token_reads_secrets_and_wraps_keys_but_never_writes(
    private_openbao, roles
):
    stored = tenant_secrets()
    kv(private_openbao, roles["onboarding"]).write("acme", stored, cas=0)
    store = kv(private_openbao, roles["provisioner"])
    assert store.read("acme").claude_oauth_token == stored.claude_oauth_token
    with pytest.raises(SecretsBackendUnavailable) as exc:
        store.write("acme", tenant_secrets(), cas=1)
    assert refused(exc)
    with pytest.raises(SecretsBackendUnavailable) as exc:
        store.write("other", tenant_secrets(), cas=0)
    assert refused(exc)
    with pytest.raises(SecretsBackendUnavailable) as exc:
        store.delete("acme")
    assert refused(exc)
    assert kv(private_openbao, roles["onboarding"]).read("acme").version == 1, "nothing changed"

    keys = transit(private_openbao, roles["provisioner"])
    key, wrapped = keys.data_key()
    assert keys.unwrap(wrapped) == key
    for forbidden in (keys.rotate, lambda: keys.rewrap(wrapped), keys.latest_version):
        with pytest.raises(BundleBackendUnavailable) as exc:
            forbidden()
        assert refused(exc)


def test_the_rotation_token_rotates_and_rewraps_without_seeing_a_key_or_a_secret(
    private_openbao, roles
):
    kv(private_openbao, roles["onboarding"]).write("acme", tenant_secrets(), cas=0)
    _, wrapped = transit(private_openbao, roles["provisioner"]).data_key()
    keys = transit(private_openbao, roles["rotation"])
    keys.rotate()
    version = keys.latest_version()
    assert version == 2
    assert keys.rewrap(wrapped).startswith("vault:v2:")
    keys.set_min_decryption_version(version)
    for forbidden in (keys.data_key, lambda: keys.unwrap(wrapped)):
        with pytest.raises(BundleBackendUnavailable) as exc:
            forbidden()
        assert refused(exc)
    with pytest.raises(SecretsBackendUnavailable) as exc:
        kv(private_openbao, roles["rotation"]).read("acme")
    assert refused(exc)


def test_no_role_token_can_touch_other_paths_or_the_server(private_openbao, roles):
    for token in roles.values():
        client = hvac.Client(url=private_openbao.addr, token=token, timeout=5)
        for call in (
            lambda c=client: c.secrets.kv.v2.create_or_update_secret("elsewhere", {"k": "v"}),
            lambda c=client: c.sys.list_mounted_secrets_engines(),
            lambda c=client: c.sys.list_policies(),
            lambda c=client: c.auth.token.create(policies=["default"]),
        ):
            with pytest.raises(hvac.exceptions.Forbidden):
                call()
