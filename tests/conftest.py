"""Session-wide real peers: a private Postgres database, a Redis DB number, OpenBao, simulators.

Every test creates its own data (fresh tenant names, fresh instances) and leaves none behind that
another test could see.
"""

import os
import secrets

import psycopg
import pytest

from tests.support.processes import start_openbao, start_simulator
from tests.support.stack import claimed_redis_db

PG_ADMIN_DSN = os.environ.get("TEST_PG_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_BASE = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379")

# A skipped or xfail-marked test fails the run: `make test` installs what the tests need.
pytest_plugins = ["tests.support.no_skips"]


@pytest.fixture(scope="session")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("peers")


@pytest.fixture(scope="session")
def database_url():
    """A fresh database for this test session, dropped at the end."""
    name = f"dark_test_{secrets.token_hex(6)}"
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN_DSN.rsplit("/", 1)[0]
    yield f"{base}/{name}"
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def redis_url():
    """A Redis DB number of our own, flushed at the end."""
    with claimed_redis_db(REDIS_BASE) as url:
        yield url


@pytest.fixture(scope="session")
def openbao(workdir):
    bao = start_openbao(workdir)
    yield bao
    bao.stop()


@pytest.fixture
def private_openbao(tmp_path):
    """An OpenBao of the test's own, for tests that seal or stop it."""
    bao = start_openbao(tmp_path)
    yield bao
    bao.stop()


@pytest.fixture(scope="session")
def simulator(workdir):
    sim = start_simulator(workdir)
    yield sim
    sim.stop()


@pytest.fixture(scope="session")
def migrated_database_url(database_url):
    from shared.adapters.db import migrate

    migrate(database_url)
    return database_url


@pytest.fixture(scope="session")
def pg_pool(migrated_database_url):
    from shared.adapters.db import make_pool

    pool = make_pool(migrated_database_url, max_size=8)
    yield pool
    pool.close()
