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
from shared.domain.records import instance_summary, summaries_json
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


def test_rows_written_before_the_summary_migration_get_their_listing_item(
    fresh_database_url, monkeypatch
):
    # A database at 0009 with rows in it, then the rest of the migrations: 0010 itself rewrites no
    # row (it only adds the column and the trigger), and migrate()'s backfill writes each row's
    # listing item in batches, byte for byte as Python's summaries_json writes it.
    later = sorted(p for p in MIGRATIONS_DIR.glob("*.sql") if p.name >= "0010")
    assert later, "the summary migration exists"
    with psycopg.connect(fresh_database_url, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE schema_migrations (name text PRIMARY KEY,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        for path in sorted(MIGRATIONS_DIR.glob("*.sql")):
            if path.name < "0010":
                conn.execute(path.read_text())
                conn.execute("INSERT INTO schema_migrations (name) VALUES (%s)", (path.name,))
        conn.execute(
            "INSERT INTO instances (id, tenant, status, vm_name, idempotency_key, reason,"
            " created_at, updated_at)"
            " SELECT gen_random_uuid(), 'old-tenant', 'failed', 'dark-vm-old-' || n,"
            " gen_random_uuid(), 'guest said \"no\"',"
            " '2026-03-01 09:00:00.5+00'::timestamptz + make_interval(secs => n),"
            " '2026-03-01 10:00:00+00' FROM generate_series(1, 7) AS n"
        )
    batches = []
    real_execute = psycopg.Connection.execute

    def counting(self, query, *args, **kwargs):
        cursor = real_execute(self, query, *args, **kwargs)
        if isinstance(query, str) and query.startswith("UPDATE instances SET summary_json"):
            batches.append(cursor.rowcount)
        return cursor

    monkeypatch.setattr(db, "_BACKFILL_BATCH", 3)
    monkeypatch.setattr(psycopg.Connection, "execute", counting)
    assert migrate(fresh_database_url) == [p.name for p in later]
    monkeypatch.undo()
    assert batches == [3, 3, 1]
    with psycopg.connect(fresh_database_url) as conn:
        assert (
            conn.execute("SELECT count(*) FROM instances WHERE summary_json IS NULL").fetchone()[0]
            == 0
        )
    pool = make_pool(fresh_database_url)
    try:
        registry = PostgresFleetRegistry(pool)
        items, _ = registry.list(limit=10)
        text, _ = registry.list_json(limit=10)
    finally:
        pool.close()
    assert len(items) == 7
    assert text == summaries_json([instance_summary(item) for item in items])
    assert '"created_at":"2026-03-01T09:00:07.500000+00:00"' in text


def test_a_row_without_its_listing_item_is_listed_all_the_same(fresh_database_url):
    # Between the migration and the end of its backfill (or for a row a writer held meanwhile).
    migrate(fresh_database_url)
    pool = make_pool(fresh_database_url)
    try:
        registry = PostgresFleetRegistry(pool)
        made = [registry.create(f"tenant-{n}")[0] for n in range(3)]
        with pool.connection() as conn:
            conn.execute("ALTER TABLE instances DISABLE TRIGGER instances_summary_json")
            conn.execute("UPDATE instances SET summary_json = NULL WHERE id = %s", (made[1].id,))
            conn.execute("ALTER TABLE instances ENABLE TRIGGER instances_summary_json")
        items, _ = registry.list(limit=10)
        pages = [registry.list_json(limit=limit) for limit in (1, 2, 10)]
    finally:
        pool.close()
    assert pages[2][0] == summaries_json([instance_summary(item) for item in items])
    # The cursor after a page ending on that row is the one the rows give.
    assert pages[1][1] is not None and pages[0][1] is not None
