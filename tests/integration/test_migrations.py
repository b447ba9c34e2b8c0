"""Schema migrations on the real Postgres: several processes starting at once apply each migration
exactly once; re-running is a no-op; a broken migration is not recorded and blocks nobody."""

import secrets
import threading
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest

from shared.adapters import db
from shared.adapters.db import MIGRATIONS_DIR, make_pool, migrate
from shared.adapters.registry import PostgresFleetRegistry
from shared.domain.lifecycle import Status
from tests.conftest import PG_ADMIN_DSN


@pytest.fixture
def fresh_database_url():
    name = f"dark_migrate_{secrets.token_hex(6)}"
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield f"{PG_ADMIN_DSN.rsplit('/', 1)[0]}/{name}"
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def recorded(database_url: str) -> list[str]:
    with psycopg.connect(database_url) as conn:
        return [row[0] for row in conn.execute("SELECT name FROM schema_migrations ORDER BY name")]


def test_six_concurrent_migrations_apply_each_file_exactly_once(fresh_database_url):
    names = sorted(path.name for path in MIGRATIONS_DIR.glob("*.sql"))
    start = threading.Barrier(6)

    def run(_):
        start.wait(timeout=10)
        return migrate(fresh_database_url)

    # Each thread has its own connection, hence its own Postgres session, as separate processes
    # would: the advisory lock does not know the difference.
    with ThreadPoolExecutor(6) as pool:
        applied = list(pool.map(run, range(6)))

    assert sorted(name for names_applied in applied for name in names_applied) == names
    assert recorded(fresh_database_url) == names
    assert migrate(fresh_database_url) == []
    assert recorded(fresh_database_url) == names


def test_the_migrated_schema_works(fresh_database_url):
    migrate(fresh_database_url)
    pool = make_pool(fresh_database_url)
    try:
        registry = PostgresFleetRegistry(pool)
        instance, _ = registry.create("schema-check")
        registry.transition(instance.id, Status.PENDING, Status.PROVISIONING, "check")
        assert [e.to_status for e in registry.events(instance.id)] == [
            Status.PENDING,
            Status.PROVISIONING,
        ]
        with pool.connection() as conn:
            tables = {
                row[0]
                for row in conn.execute(
                    "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
                )
            }
    finally:
        pool.close()
    assert {
        "instances",
        "instance_events",
        "credential_bundles",
        "tenants",
        "reconcile_runs",
    } <= tables


def test_a_new_migration_is_applied_alone_and_a_broken_one_is_not_recorded(
    fresh_database_url, tmp_path, monkeypatch
):
    monkeypatch.setattr(db, "MIGRATIONS_DIR", tmp_path)
    (tmp_path / "0001_first.sql").write_text("CREATE TABLE first_table (id int);")
    assert migrate(fresh_database_url) == ["0001_first.sql"]

    (tmp_path / "0002_second.sql").write_text("CREATE TABLE second_table (id int);")
    (tmp_path / "0003_broken.sql").write_text(
        "CREATE TABLE half_done (id int); SELECT no_such_function();"
    )
    with pytest.raises(psycopg.errors.UndefinedFunction):
        migrate(fresh_database_url)
    assert recorded(fresh_database_url) == ["0001_first.sql", "0002_second.sql"]

    # The failed file rolled back as a whole and released the lock: fixing it lets it apply.
    (tmp_path / "0003_broken.sql").write_text("CREATE TABLE half_done (id int);")
    assert migrate(fresh_database_url) == ["0003_broken.sql"]
