"""Issue 14, item 3: managed Postgres and Redis over TLS (deploy/README.md, "Several hosts").

The whole path of a provision runs over TLS: the gateway and a provisioner worker (real
processes) whose broker and result backend are a `redis-server` listening on TLS only
(`rediss://` + REDIS_CA_FILE), and whose registry is a Postgres with `ssl=on` reached with
`sslmode=verify-full` (tests/support/tls.py; that server also demands a client certificate, so a
connection that dropped the URL's parameters anywhere would fail rather than fall back).
A plain-text configuration is refused before it connects, and the servers refuse plain text too.
"""

import secrets
import subprocess
import sys

import psycopg
import pytest
import redis

from shared.adapters.db import migrate
from shared.settings import SettingsError, load_settings
from tests.support.processes import ROOT
from tests.support.stack import make_stack
from tests.support.tls import make_test_ca, tls_postgres, tls_redis


@pytest.fixture(scope="module")
def ca(tmp_path_factory):
    return make_test_ca(tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="module")
def pg(ca):
    with tls_postgres(ca) as server:
        yield server


@pytest.fixture(scope="module")
def database_url(pg):
    url = pg.create_database("dark_tls")
    migrate(url)
    return url


@pytest.fixture(scope="module")
def broker(tmp_path_factory, ca):
    with tls_redis(tmp_path_factory.mktemp("redis-tls"), ca) as server:
        yield server


@pytest.fixture(scope="module")
def tls_stack(tmp_path_factory, e2e_sim, openbao, database_url, broker, ca):
    s = make_stack(
        tmp_path_factory.mktemp("tls"),
        e2e_sim,
        openbao,
        database_url,
        broker.url,
        REDIS_CA_FILE=str(ca.ca_cert),
        DARK_DB_REQUIRE_TLS="true",
    )
    try:
        s.start_api()
        s.start_worker()
        yield s
    finally:
        s.stop()


def test_a_provision_completes_over_tls_redis_and_verify_full_postgres(tls_stack, pg):
    tenant = "tls-" + secrets.token_hex(3)
    tls_stack.onboard(tenant)
    inst = tls_stack.provision(tenant)
    done = tls_stack.wait_status(tenant, inst["id"], "ready", timeout=60)
    assert done["status"] == "ready"
    # Readiness probes both dependencies with connections of their own, over TLS as well.
    ready = tls_stack.api("GET", "/ready")
    assert ready.status_code == 200, ready.text
    # Every connection the stack holds to its database is encrypted.
    with psycopg.connect(pg.admin_dsn) as conn:
        rows = conn.execute(
            "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)"
            " WHERE a.datname = 'dark_tls' AND a.pid <> pg_backend_pid()"
        ).fetchall()
    assert rows and all(ssl for (ssl,) in rows), rows


def test_the_tls_servers_refuse_plain_text(broker, pg):
    client = redis.Redis.from_url(broker.plain_url, socket_timeout=2)
    with pytest.raises(redis.ConnectionError):
        client.ping()
    client.close()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(pg.url("dark_tls", "sslmode=disable"), connect_timeout=3).close()


def test_a_plain_text_configuration_is_refused_before_connecting(broker, pg, ca, database_url):
    tls = {"REDIS_URL": broker.url, "REDIS_CA_FILE": str(ca.ca_cert), "DATABASE_URL": database_url}
    load_settings(tls, service="reconciler")  # the TLS configuration itself is accepted
    with pytest.raises(SettingsError, match="rediss://"):
        load_settings({**tls, "REDIS_URL": broker.plain_url}, service="reconciler")
    downgraded = pg.url("dark_tls", f"sslmode=prefer&sslrootcert={ca.ca_cert}")
    with pytest.raises(SettingsError, match="verify-full"):
        load_settings({**tls, "DATABASE_URL": downgraded}, service="reconciler")
    with pytest.raises(SettingsError, match="DARK_DB_REQUIRE_TLS"):
        load_settings(
            {**tls, "DATABASE_URL": pg.url("dark_tls", ""), "DARK_DB_REQUIRE_TLS": "true"},
            service="reconciler",
        )


def test_a_worker_given_a_plain_text_database_url_does_not_start(tls_stack, pg):
    env = {**tls_stack.env, "DATABASE_URL": pg.url("dark_tls", "sslmode=require")}
    result = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "services.provisioner.worker", "inspect", "ping"],
        cwd=ROOT,
        env={**env, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "sslmode=verify-full" in result.stderr
