import pytest

from shared.settings import SettingsError, load_settings

PROD = {
    "DARK_ENV": "production",
    "DARK_API_TOKENS": "a" * 32,
    "DARK_ONBOARDING_TOKENS": "b" * 32,
    "DARK_VM_IMAGE": "fd8image",
    "FLOWER_BASIC_AUTH": "ops:" + "c" * 20,
    "YC_SA_KEY_FILE": "/etc/dark/sa.json",
    "DARK_SESSION_SECRET": "d" * 32,
    "DARK_DEPLOYMENT": "prod-eu",
}


def test_defaults_apply_when_nothing_is_set():
    settings = load_settings({})
    assert settings.reconcile_interval == 60
    assert settings.api_bind == "127.0.0.1:8080"
    assert not settings.production


def test_an_empty_variable_counts_as_unset():
    assert load_settings({"RECONCILE_INTERVAL_SECS": "  "}).reconcile_interval == 60


def test_a_malformed_value_names_its_variable():
    with pytest.raises(SettingsError, match="RECONCILE_INTERVAL_SECS"):
        load_settings({"RECONCILE_INTERVAL_SECS": "soon"})
    with pytest.raises(SettingsError, match="RECONCILE_DRY_RUN"):
        load_settings({"RECONCILE_DRY_RUN": "maybe"})
    with pytest.raises(SettingsError, match="DARK_BIND"):
        load_settings({"DARK_BIND": "8080"})


def test_production_starts_with_everything_it_needs():
    assert load_settings(PROD).production


@pytest.mark.parametrize(
    "missing",
    [
        "DARK_API_TOKENS",
        "DARK_ONBOARDING_TOKENS",
        "DARK_VM_IMAGE",
        "FLOWER_BASIC_AUTH",
        "DARK_SESSION_SECRET",
        "DARK_DEPLOYMENT",
    ],
)
def test_production_refuses_to_start_without(missing):
    with pytest.raises(SettingsError, match=missing):
        load_settings({**PROD, missing: ""})


def test_development_falls_back_to_the_local_deployment_label():
    assert load_settings({}).deployment == "local"


def test_the_reconcile_blast_radius_cap_defaults_to_10_and_is_never_negative():
    assert load_settings({}).reconcile_max_destructive == 10
    assert load_settings({"RECONCILE_MAX_DESTRUCTIVE": "0"}).reconcile_max_destructive == 0
    with pytest.raises(SettingsError, match="RECONCILE_MAX_DESTRUCTIVE"):
        load_settings({"RECONCILE_MAX_DESTRUCTIVE": "-1"})


def test_gateway_and_onboarding_tokens_must_differ():
    with pytest.raises(SettingsError, match="DARK_ONBOARDING_TOKENS"):
        load_settings({"DARK_API_TOKENS": "x" * 20, "DARK_ONBOARDING_TOKENS": "x" * 20})


def test_tokens_and_vault_token_never_print():
    settings = load_settings({**PROD, "VAULT_TOKEN": "hvs.very-secret-value"})
    text = repr(settings)
    assert "hvs.very-secret-value" not in text
    assert "a" * 32 not in text
    assert "c" * 20 not in text
    assert "d" * 32 not in text


def test_env_example_lists_every_setting_and_nothing_else():
    from pathlib import Path

    from shared.settings import env_names

    text = Path(__file__).resolve().parents[2].joinpath(".env.example").read_text()
    listed = {
        line.split("=", 1)[0].strip()
        for line in text.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    }
    assert listed == set(env_names())


def test_invites_last_a_week_and_link_to_the_onboarding_bind_by_default():
    settings = load_settings({"DARK_ONBOARDING_BIND": "0.0.0.0:9081"})
    assert settings.invite_ttl_secs == 7 * 24 * 3600
    assert settings.onboarding_page_url == "http://0.0.0.0:9081/"


def test_invite_links_start_with_the_public_onboarding_url():
    settings = load_settings({"DARK_ONBOARDING_PUBLIC_URL": "https://onboard.example.com"})
    assert settings.onboarding_page_url == "https://onboard.example.com/"
    with pytest.raises(SettingsError, match="DARK_ONBOARDING_PUBLIC_URL"):
        load_settings({"DARK_ONBOARDING_PUBLIC_URL": "onboard.example.com"})


@pytest.mark.parametrize("ttl", ["0", "-5", "week"])
def test_an_invite_ttl_must_be_a_positive_number_of_seconds(ttl):
    with pytest.raises(SettingsError, match="DARK_INVITE_TTL_SECS"):
        load_settings({"DARK_INVITE_TTL_SECS": ttl})
