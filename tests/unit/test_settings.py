import pytest

from shared.settings import SERVICE_SETTINGS, SettingsError, env_names, load_settings

PROD = {
    "DARK_ENV": "production",
    "DARK_API_TOKENS": "a" * 32,
    "DARK_ONBOARDING_TOKENS": "b" * 32,
    "DARK_VM_IMAGE": "fd8image",
    "FLOWER_BASIC_AUTH": "ops:" + "c" * 20,
    "YC_SA_KEY_FILE": "/etc/dark/sa.json",
    "DARK_SESSION_SECRET": "d" * 32,
    "DARK_DEPLOYMENT": "prod-eu",
    "YC_SECURITY_GROUP_IDS": "enp1a2b3c4d5e6f7g8h9",
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
        "YC_SECURITY_GROUP_IDS",
    ],
)
def test_production_refuses_to_start_without(missing):
    with pytest.raises(SettingsError, match=missing):
        load_settings({**PROD, missing: ""})


def test_security_group_ids_are_a_comma_separated_list_of_cloud_ids():
    assert load_settings({}).yc_security_group_ids == ()
    parsed = load_settings({"YC_SECURITY_GROUP_IDS": " enpaaa1 , enpbbb2,,enpaaa1 "})
    assert parsed.yc_security_group_ids == ("enpaaa1", "enpbbb2")
    for bad in ("enp aaa", "ENPAAA", "enp;drop", "x"):
        with pytest.raises(SettingsError, match="YC_SECURITY_GROUP_IDS"):
            load_settings({"YC_SECURITY_GROUP_IDS": bad})


def test_the_guest_network_is_public_unless_set_to_internal():
    assert load_settings({}).guest_network == "public"
    assert load_settings({"DARK_GUEST_NETWORK": "Internal"}).guest_network == "internal"
    with pytest.raises(SettingsError, match="DARK_GUEST_NETWORK"):
        load_settings({"DARK_GUEST_NETWORK": "vpn"})


def test_the_metrics_loopback_exemption_is_off_unless_set_and_never_in_production():
    assert load_settings({}).metrics_loopback_open is False
    assert load_settings({"DARK_METRICS_LOOPBACK_OPEN": "true"}).metrics_loopback_open is True
    assert load_settings({**PROD, "DARK_METRICS_LOOPBACK_OPEN": "false"}).production
    with pytest.raises(SettingsError, match="DARK_METRICS_LOOPBACK_OPEN"):
        load_settings({**PROD, "DARK_METRICS_LOOPBACK_OPEN": "true"})


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


# --- per service (docs/ARCHITECTURE.md#secrets) ---------------------------------------------------


def test_every_setting_is_read_by_some_service():
    read = set().union(*SERVICE_SETTINGS.values())
    assert set(env_names()) - read == set(), "add a new setting to the services that read it"
    assert read <= set(env_names()), "a service set names a variable that is not a setting"


def test_only_onboarding_the_provisioner_and_rotation_read_a_vault_token():
    holders = {name for name, reads in SERVICE_SETTINGS.items() if "VAULT_TOKEN" in reads}
    assert holders == {"onboarding", "provisioner", "rotate"}
    # Flower: the broker (its URL, CA file and Sentinel master) and its basic auth, nothing else.
    assert SERVICE_SETTINGS["flower"] == {
        "DARK_ENV",
        "REDIS_URL",
        "REDIS_CA_FILE",
        "REDIS_SENTINEL_MASTER",
        "FLOWER_BASIC_AUTH",
    }


PER_SERVICE = {
    "api": {"DARK_API_TOKENS": "a" * 32, "DARK_SESSION_SECRET": "d" * 32},
    "onboarding": {"DARK_ONBOARDING_TOKENS": "b" * 32, "VAULT_TOKEN": "onb-" + "v" * 20},
    "provisioner": {
        "VAULT_TOKEN": "prov-" + "v" * 20,
        "DARK_VM_IMAGE": "fd8image",
        "YC_SA_KEY_FILE": "/etc/dark/sa.json",
        "DARK_DEPLOYMENT": "prod-eu",
        "YC_SECURITY_GROUP_IDS": "enp-sg-control-plane",
    },
    "reconciler": {"YC_SA_KEY_FILE": "/etc/dark/sa.json", "DARK_DEPLOYMENT": "prod-eu"},
    "beat": {},
    "flower": {"FLOWER_BASIC_AUTH": "ops:" + "c" * 20},
    "migrate": {},
    "rotate": {"VAULT_TOKEN": "rot-" + "v" * 20},
}


@pytest.mark.parametrize("service", sorted(SERVICE_SETTINGS))
def test_each_service_starts_in_production_with_only_its_own_secrets(service):
    own = PER_SERVICE[service]
    assert set(own) <= SERVICE_SETTINGS[service]
    assert load_settings({"DARK_ENV": "production", **own}, service=service).production
    for missing in own:
        with pytest.raises(SettingsError, match=missing):
            load_settings({"DARK_ENV": "production", **own, missing: ""}, service=service)


def test_the_gateway_no_longer_demands_a_vault_token_or_cloud_credentials():
    settings = load_settings({"DARK_ENV": "production", **PER_SERVICE["api"]}, service="api")
    assert settings.vault_token is None and settings.yc_sa_key_file is None


def test_a_vault_token_is_demanded_per_service_never_of_all():
    # No single token serves every process, so the all-services check cannot ask for one.
    assert load_settings(PROD).vault_token is None
    with pytest.raises(SettingsError, match="VAULT_TOKEN"):
        load_settings({**PROD}, service="provisioner")


def test_an_unknown_service_is_a_programming_error():
    with pytest.raises(ValueError, match="unknown service"):
        load_settings({}, service="gateway")


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


def test_the_provisioner_refuses_to_start_on_a_real_cloud_with_no_vm_image():
    # Development mode too: YC_ROOT_CERT unset means the system's roots, i.e. the real cloud.
    with pytest.raises(SettingsError, match="DARK_VM_IMAGE: required when the provisioner"):
        load_settings({"DARK_ENV": "development"}, service="provisioner")
    # The simulator brings its own root certificate and has a default image.
    assert load_settings({"YC_ROOT_CERT": "/tmp/sim.pem"}, service="provisioner").vm_image is None
    assert (
        load_settings({"DARK_VM_IMAGE": "fd8image"}, service="provisioner").vm_image == "fd8image"
    )
    # Only the provisioner creates VMs: the other processes start without it.
    load_settings({}, service="reconciler")
