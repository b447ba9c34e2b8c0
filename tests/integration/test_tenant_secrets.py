"""HvacTenantSecrets against a real OpenBao: KV v2 round trips, tenant paths, failure mapping.

Secret values are canaries: every message, repr and log line is checked not to contain them.
"""

import logging
import secrets
import socket
import time
import unicodedata
from urllib.parse import quote

import pytest

from shared.adapters.vault_client import vault_client
from shared.adapters.vault_kv import HvacTenantSecrets, tenant_secret_path
from shared.domain.errors import (
    InvalidTenantName,
    SecretsBackendUnavailable,
    SecretsConflict,
    SecretsMissing,
)
from shared.domain.secrets import ForgeCredential, Secret, TenantSecrets
from shared.settings import Settings, SettingsError


def client_for(bao, **settings):
    return vault_client(Settings(vault_addr=bao.addr, vault_token=bao.token, **settings))


def canary_secrets() -> TenantSecrets:
    return TenantSecrets(
        claude_oauth_token=Secret("sk-ant-oat01-canary-" + secrets.token_hex(16)),
        nks_pat=Secret("nks-canary-" + secrets.token_hex(16)),
        forges=(
            ForgeCredential("github", "github.com", Secret("ghp-canary-" + secrets.token_hex(16))),
            ForgeCredential(
                "gitea", "git.example.org", Secret("gitea-canary-" + secrets.token_hex(8))
            ),
        ),
    )


def values_of(tenant_secrets: TenantSecrets) -> list[str]:
    return [
        tenant_secrets.claude_oauth_token.reveal(),
        tenant_secrets.nks_pat.reveal(),
        *(forge.token.reveal() for forge in tenant_secrets.forges),
    ]


def assert_no_values(text: str, tenant_secrets: TenantSecrets) -> None:
    for value in values_of(tenant_secrets):
        assert value not in text


def assert_no_values_in_error(exc: Exception, tenant_secrets: TenantSecrets) -> None:
    assert_no_values(f"{exc} {exc!r} {getattr(exc, 'details', '')!r}", tenant_secrets)


def stored_keys(raw_client) -> set[str]:
    return set(raw_client.secrets.kv.v2.list_secrets("tenants")["data"]["keys"])


@pytest.fixture
def raw(openbao):
    return openbao.client()


@pytest.fixture
def store(openbao):
    return HvacTenantSecrets(client_for(openbao))


@pytest.fixture
def new_tenant(raw):
    """Makes unique tenant names; whatever they left in the session's OpenBao goes at the end."""
    made: list[str] = []

    def make(stem: str = "tenant") -> str:
        name = f"{stem}-{secrets.token_hex(4)}"
        made.append(name)
        return name

    yield make
    for name in made:
        raw.secrets.kv.v2.delete_metadata_and_all_versions(tenant_secret_path(name))


def test_written_secrets_read_back_and_presence_shows_only_what_is_set(store, new_tenant):
    tenant = new_tenant()
    written = canary_secrets()

    assert store.write(tenant, written) == 1
    read = store.read(tenant)
    assert read == TenantSecrets(
        written.claude_oauth_token, written.nks_pat, written.forges, version=1
    )

    presence = store.presence(tenant)
    assert (presence.claude_oauth_token, presence.nks_pat) == (True, True)
    assert presence.forges == ("github", "gitea")
    assert presence.version == 1
    assert presence.updated_at.endswith("Z")

    without_nks = TenantSecrets(written.claude_oauth_token, Secret(""), ())
    assert store.write(tenant, without_nks) == 2
    presence = store.presence(tenant)
    assert (presence.nks_pat, presence.forges, presence.version) == (False, (), 2)


def test_deleted_tenant_reads_as_not_onboarded(store, new_tenant):
    tenant = new_tenant()
    store.write(tenant, canary_secrets())

    store.delete(tenant)

    with pytest.raises(SecretsMissing, match="tenant not onboarded"):
        store.read(tenant)
    assert store.presence(tenant) is None
    store.delete(tenant)  # offboarding twice is not an error


def test_never_onboarded_tenant_is_missing(store, new_tenant):
    with pytest.raises(SecretsMissing):
        store.read(new_tenant())
    assert store.presence(new_tenant()) is None


def test_soft_deleted_latest_version_reads_as_not_onboarded(store, raw, new_tenant):
    tenant = new_tenant()
    store.write(tenant, canary_secrets())
    raw.secrets.kv.v2.delete_latest_version_of_secret(tenant_secret_path(tenant))

    with pytest.raises(SecretsMissing):
        store.read(tenant)
    assert store.presence(tenant) is None


@pytest.mark.parametrize(
    "raw_name",
    [
        "Москва-ёлка",
        "東京_チーム.開発",
        # NFD input: 'e' + COMBINING ACUTE ACCENT, stored and found under its NFC form.
        unicodedata.normalize("NFD", "école-ñandú"),
        # Devanagari with combining vowel signs that have no precomposed form.
        "हिन्दी",
    ],
)
def test_unicode_tenant_names_round_trip_under_their_nfc_form(store, raw, new_tenant, raw_name):
    tenant = new_tenant(raw_name)
    nfc = unicodedata.normalize("NFC", tenant)
    written = canary_secrets()

    store.write(tenant, written)

    assert store.read(nfc).claude_oauth_token == written.claude_oauth_token
    assert store.read(unicodedata.normalize("NFD", tenant)).nks_pat == written.nks_pat
    assert quote(nfc, safe="") in stored_keys(raw)
    if nfc != tenant:
        assert quote(tenant, safe="") not in stored_keys(raw)


def test_similar_names_each_get_exactly_one_key_of_their_own(store, raw, new_tenant):
    stem = new_tenant("n")
    names = [stem, f"{stem}.b", f"{stem}..b", f"{stem}_b", f"{stem}-b", f"{stem}.", stem.upper()]
    written = {name: canary_secrets() for name in names}

    for name, tenant_secrets in written.items():
        store.write(name, tenant_secrets)

    ours = {key for key in stored_keys(raw) if stem.lower() in key.lower()}
    assert ours == {quote(name, safe="") for name in names}
    assert all("/" not in key for key in ours)
    for name, tenant_secrets in written.items():
        assert store.read(name).claude_oauth_token == tenant_secrets.claude_oauth_token


@pytest.mark.parametrize(
    "suffix",
    ["/../victim", "%2F..%2Fvictim", "%2e%2e", "/victim", "\x00", " victim", "\\victim", "?v=1"],
)
def test_names_that_could_reach_another_path_are_refused_and_write_nothing(
    store, raw, new_tenant, suffix
):
    victim = new_tenant("victim")
    store.write(victim, canary_secrets())
    before = stored_keys(raw)

    with pytest.raises(InvalidTenantName):
        store.write(victim + suffix, canary_secrets())
    with pytest.raises(InvalidTenantName):
        store.read(victim + suffix)
    with pytest.raises(InvalidTenantName):
        store.write("..", canary_secrets())

    assert stored_keys(raw) == before


def test_check_and_set_detects_a_concurrent_write(store, new_tenant):
    tenant = new_tenant()
    first, second = canary_secrets(), canary_secrets()

    assert store.write(tenant, first, cas=0) == 1
    with pytest.raises(SecretsConflict) as create_again:
        store.write(tenant, second, cas=0)
    assert store.write(tenant, second, cas=1) == 2
    with pytest.raises(SecretsConflict) as stale:
        store.write(tenant, first, cas=1)

    assert store.read(tenant).version == 2
    assert store.read(tenant).nks_pat == second.nks_pat
    for exc in (create_again.value, stale.value):
        assert_no_values_in_error(exc, first)
        assert_no_values_in_error(exc, second)


def test_malformed_stored_secrets_are_a_backend_error_that_names_no_value(store, raw, new_tenant):
    tenant = new_tenant()
    leaked = canary_secrets()
    raw.secrets.kv.v2.create_or_update_secret(
        tenant_secret_path(tenant),
        {"claude_oauth_token": leaked.claude_oauth_token.reveal(), "nks_pat": 7, "forges": "x"},
    )

    with pytest.raises(SecretsBackendUnavailable) as read_error:
        store.read(tenant)
    with pytest.raises(SecretsBackendUnavailable) as presence_error:
        store.presence(tenant)

    assert not isinstance(read_error.value, SecretsMissing)
    assert_no_values_in_error(read_error.value, leaked)
    assert_no_values_in_error(presence_error.value, leaked)


def test_a_missing_kv_mount_is_a_backend_error_not_a_missing_tenant(openbao, new_tenant):
    misconfigured = HvacTenantSecrets(client_for(openbao), kv_mount="no-such-mount")

    with pytest.raises(SecretsBackendUnavailable):
        misconfigured.read(new_tenant())


def test_a_refused_token_is_a_backend_error(openbao, new_tenant):
    refused = HvacTenantSecrets(vault_client(Settings(vault_addr=openbao.addr, vault_token="nope")))

    with pytest.raises(SecretsBackendUnavailable, match="Forbidden"):
        refused.read(new_tenant())
    with pytest.raises(SecretsBackendUnavailable):
        refused.write(new_tenant(), canary_secrets())


def test_sealed_vault_is_unavailable_never_missing(private_openbao, new_tenant):
    store = HvacTenantSecrets(client_for(private_openbao))
    onboarded, never_onboarded = new_tenant(), new_tenant()
    written = canary_secrets()
    store.write(onboarded, written)
    with pytest.raises(SecretsMissing):
        store.read(never_onboarded)

    private_openbao.seal()

    for call in (
        lambda: store.read(onboarded),
        lambda: store.read(never_onboarded),
        lambda: store.presence(onboarded),
        lambda: store.write(onboarded, written),
        lambda: store.write(never_onboarded, written, cas=0),
        lambda: store.delete(onboarded),
    ):
        with pytest.raises(SecretsBackendUnavailable) as caught:
            call()
        assert not isinstance(caught.value, SecretsMissing | SecretsConflict)
        assert_no_values_in_error(caught.value, written)
        assert caught.value.__cause__ is None


def test_stopped_vault_is_unavailable(private_openbao, new_tenant):
    store = HvacTenantSecrets(client_for(private_openbao))
    tenant = new_tenant()
    written = canary_secrets()
    store.write(tenant, written)

    private_openbao.stop()

    with pytest.raises(SecretsBackendUnavailable, match="ConnectionError"):
        store.read(tenant)
    with pytest.raises(SecretsBackendUnavailable) as write_error:
        store.write(tenant, written)
    assert_no_values_in_error(write_error.value, written)
    # requests' exception keeps the request body; it must not ride along as the cause.
    assert write_error.value.__cause__ is None
    assert write_error.value.__suppress_context__


def test_unresponsive_vault_times_out_as_unavailable(new_tenant):
    with socket.socket() as silent:  # accepts connections (backlog) but never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        addr = f"http://127.0.0.1:{silent.getsockname()[1]}"
        store = HvacTenantSecrets(
            vault_client(Settings(vault_addr=addr, vault_token="t", vault_timeout=0.3))
        )

        started = time.monotonic()
        with pytest.raises(SecretsBackendUnavailable, match="Timeout"):
            store.read(new_tenant())
        assert time.monotonic() - started < 5


def test_client_uses_only_the_configured_token(openbao, monkeypatch, tmp_path):
    monkeypatch.setenv("VAULT_TOKEN", openbao.token)
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".vault-token").write_text(openbao.token)

    with pytest.raises(SettingsError, match="VAULT_TOKEN"):
        vault_client(Settings(vault_addr=openbao.addr, vault_token=None))
    assert client_for(openbao).token == openbao.token


def test_no_secret_value_in_reprs_errors_or_logs(store, new_tenant, caplog):
    caplog.set_level(logging.DEBUG)
    tenant = new_tenant()
    written = canary_secrets()

    store.write(tenant, written, cas=0)
    read = store.read(tenant)
    presence = store.presence(tenant)
    with pytest.raises(SecretsConflict) as conflict:
        store.write(tenant, written, cas=0)

    shown = " ".join(
        [repr(read), str(read), repr(read.forges), repr(presence), repr(written), repr(store)]
    )
    assert_no_values(shown, written)
    assert_no_values_in_error(conflict.value, written)
    assert_no_values(caplog.text, written)
