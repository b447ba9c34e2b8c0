"""Managed Postgres and Redis over TLS: the settings refuse a downgrade, and Celery and the direct
Redis clients get the TLS and Sentinel options (deploy/README.md, "Several hosts")."""

import ssl

import pytest
from redis.sentinel import SentinelManagedSSLConnection

from shared.celery_app import broker_client, make_celery
from shared.settings import SettingsError, _conninfo_params, load_settings


@pytest.fixture
def ca_file(tmp_path):
    path = tmp_path / "ca.crt"
    path.write_text("-----BEGIN CERTIFICATE-----\n")
    return str(path)


def test_rediss_with_a_ca_file_verifies_the_certificate_for_broker_and_results(ca_file):
    app = make_celery(
        load_settings({"REDIS_URL": "rediss://:pw@redis.example:6380/0", "REDIS_CA_FILE": ca_file})
    )
    wanted = {"ssl_cert_reqs": ssl.CERT_REQUIRED, "ssl_ca_certs": ca_file}
    assert app.conf.broker_use_ssl == wanted
    assert app.conf.redis_backend_use_ssl == wanted


def test_rediss_without_a_ca_file_still_verifies_against_the_system_roots():
    app = make_celery(load_settings({"REDIS_URL": "rediss://redis.example:6380/0"}))
    assert app.conf.broker_use_ssl == {"ssl_cert_reqs": ssl.CERT_REQUIRED}


def test_plain_redis_gets_no_tls_options():
    app = make_celery(load_settings({}))
    assert not app.conf.broker_use_ssl and not app.conf.redis_backend_use_ssl


def test_a_ca_file_with_a_plain_text_redis_url_is_refused(ca_file):
    with pytest.raises(SettingsError, match="REDIS_URL: REDIS_CA_FILE is set"):
        load_settings({"REDIS_URL": "redis://redis.example:6379/0", "REDIS_CA_FILE": ca_file})


@pytest.mark.parametrize("reqs", ["none", "CERT_NONE", "optional", "CERT_OPTIONAL"])
def test_a_rediss_url_that_skips_verification_is_refused(reqs):
    with pytest.raises(SettingsError, match="ssl_cert_reqs"):
        load_settings({"REDIS_URL": f"rediss://redis.example:6380/0?ssl_cert_reqs={reqs}"})


def test_a_missing_ca_file_is_named_at_start_up(tmp_path):
    with pytest.raises(SettingsError, match="REDIS_CA_FILE: no such file"):
        load_settings(
            {"REDIS_URL": "rediss://r:6380/0", "REDIS_CA_FILE": str(tmp_path / "absent.crt")}
        )


def test_sentinel_urls_need_the_master_name_and_pass_it_to_broker_and_results():
    url = "sentinel://s1:26379;sentinel://s2:26379/2"
    with pytest.raises(SettingsError, match="REDIS_SENTINEL_MASTER: required"):
        load_settings({"REDIS_URL": url})
    app = make_celery(load_settings({"REDIS_URL": url, "REDIS_SENTINEL_MASTER": "dark"}))
    assert app.conf.broker_transport_options["master_name"] == "dark"
    assert app.conf.result_backend_transport_options["master_name"] == "dark"
    assert app.conf.broker_transport_options["visibility_timeout"] == 900


def test_a_master_name_without_sentinel_urls_is_refused():
    with pytest.raises(SettingsError, match="only with a sentinel"):
        load_settings({"REDIS_SENTINEL_MASTER": "dark"})


def test_an_unknown_redis_scheme_is_refused():
    with pytest.raises(SettingsError, match="REDIS_URL"):
        load_settings({"REDIS_URL": "http://redis.example"})


def test_the_direct_client_on_sentinels_asks_them_for_the_master_and_speaks_tls(ca_file):
    settings = load_settings(
        {
            "REDIS_URL": "sentinel://:pw@s1:26379/3;sentinel://s2:26380/3",
            "REDIS_SENTINEL_MASTER": "dark",
            "REDIS_CA_FILE": ca_file,
        }
    )
    # Celery and kombu take the DB and password from the first URL; so does the direct client.
    client = broker_client(make_celery(settings))  # connects lazily: no network here
    pool = client.connection_pool
    assert pool.service_name == "dark"
    sentinels = [c.connection_pool.connection_kwargs for c in pool.sentinel_manager.sentinels]
    assert [(s["host"], s["port"]) for s in sentinels] == [("s1", 26379), ("s2", 26380)]
    assert pool.connection_class is SentinelManagedSSLConnection
    assert pool.connection_kwargs["db"] == 3
    assert pool.connection_kwargs["password"] == "pw"
    assert pool.connection_kwargs["ssl_ca_certs"] == ca_file
    assert pool.connection_kwargs["ssl_cert_reqs"] == ssl.CERT_REQUIRED


def test_the_direct_client_on_rediss_verifies_against_the_ca_file(ca_file):
    settings = load_settings({"REDIS_URL": "rediss://r.example:6380/1", "REDIS_CA_FILE": ca_file})
    kwargs = broker_client(make_celery(settings)).connection_pool.connection_kwargs
    assert kwargs["ssl_ca_certs"] == ca_file and kwargs["ssl_cert_reqs"] == ssl.CERT_REQUIRED


@pytest.mark.parametrize("mode", ["disable", "allow", "prefer", "require", "verify-ca"])
def test_a_database_url_short_of_verify_full_is_refused_when_tls_is_required(mode):
    url = f"postgresql://dark@pg.example:6432/dark?sslmode={mode}"
    load_settings({"DATABASE_URL": url})  # not required: accepted
    with pytest.raises(SettingsError, match="sslmode=verify-full"):
        load_settings({"DATABASE_URL": url, "DARK_DB_REQUIRE_TLS": "true"})


def test_a_root_certificate_implies_verify_full(ca_file):
    with pytest.raises(SettingsError, match="sslrootcert"):
        load_settings({"DATABASE_URL": f"postgresql://pg.example/dark?sslrootcert={ca_file}"})
    url = f"postgresql://pg.example/dark?sslmode=verify-full&sslrootcert={ca_file}"
    assert load_settings({"DATABASE_URL": url, "DARK_DB_REQUIRE_TLS": "true"}).database_url == url


def test_verify_full_in_key_value_form_is_accepted_and_a_missing_root_cert_named():
    dsn = "host=pg.example dbname=dark sslmode=verify-full sslrootcert=/nonexistent/root.crt"
    with pytest.raises(SettingsError, match="sslrootcert: no such file"):
        load_settings({"DATABASE_URL": dsn})
    load_settings({"DATABASE_URL": "host=pg.example sslmode=verify-full sslrootcert=system"})


@pytest.mark.parametrize(
    "conninfo",
    [
        "postgresql://u:p%40ss@h:6432/db?sslmode=verify-full&sslrootcert=/a%20b/root.crt",
        "postgres://h/db?sslrootcert=/r.crt&sslmode=require",
        "host=h dbname=db sslmode=verify-full sslrootcert='/a b/root.crt'",
        "host=h sslmode = require  sslrootcert=/r.crt",
        "postgresql://h/db",
    ],
)
def test_the_tls_parameters_are_read_as_libpq_reads_them(conninfo):
    from psycopg.conninfo import conninfo_to_dict

    libpq = conninfo_to_dict(conninfo)
    ours = _conninfo_params(conninfo)
    for key in ("sslmode", "sslrootcert"):
        assert ours.get(key) == libpq.get(key), key
