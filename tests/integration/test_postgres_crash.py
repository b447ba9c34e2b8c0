"""Postgres crashing under the list's page memory and under the pools, on a private cluster.

A crashed server can hand out again the transaction ids of transactions it had not yet written to
disk (an abort's record is written lazily): after the restart a new transaction gets the aborted
one's id and, when it commits, the snapshot reads exactly as it did before the crash while the
rows differ. A page remembered before the crash must not be handed out after it
(shared/adapters/registry.py, `_PageMemory`): neither after a restart (the server's start time
moves) nor after a reinitialisation that follows one backend's crash (the start time stays; every
connection ends, and the memory starts a new epoch on the first new one).

And the pools themselves: after an outage, a pool reconnects within seconds of Postgres coming
back (shared/adapters/db.py, MAX_RECONNECT_DELAY).
"""

import os
import secrets
import signal
import time

import psycopg
import pytest

from shared.adapters.db import make_pool, make_read_pool, migrate
from shared.adapters.registry import PostgresFleetRegistry
from shared.domain.errors import RegistryUnavailable
from shared.domain.tenants import TenantName
from tests.support.private_servers import private_postgres
from tests.support.processes import wait_until


@pytest.fixture(scope="module")
def pg():
    with private_postgres() as server:
        with psycopg.connect(server.admin_dsn, autocommit=True) as conn:
            # Nothing but the test moves the snapshot, and an abort's record stays in memory
            # until the crash (the WAL writer would otherwise write it within 200 ms).
            conn.execute("ALTER SYSTEM SET autovacuum = off")
            conn.execute("ALTER SYSTEM SET wal_writer_delay = '10s'")
            conn.execute("SELECT pg_reload_conf()")
        yield server


@pytest.fixture(scope="module")
def database_url(pg):
    url = pg.create_database("dark_page_memory")
    migrate(url)
    return url


def _restart(pg, _database_url):
    pg.crash()
    pg.start()


def _reinitialise(pg, database_url):
    # One backend SIGKILLed: the postmaster ends every other and reinitialises, without
    # restarting itself.
    with (
        psycopg.connect(database_url, autocommit=True) as victim,
        psycopg.connect(database_url, autocommit=True) as witness,
    ):
        (pid,) = victim.execute("SELECT pg_backend_pid()").fetchone()
        (started,) = victim.execute("SELECT pg_postmaster_start_time()").fetchone()
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not _answers(witness), 30, what="the other backends to end")
    wait_until(lambda: _start_time(database_url) == started, 30, what="reinitialised Postgres")


def _answers(conn) -> bool:
    try:
        conn.execute("SELECT 1")
    except psycopg.OperationalError:
        return False
    time.sleep(0.05)
    return True


def _start_time(database_url):
    with psycopg.connect(database_url, connect_timeout=2) as conn:
        return conn.execute("SELECT pg_postmaster_start_time()").fetchone()[0]


def _list(registry, tenant) -> str:
    # The first read after the crash may meet a connection the crash broke (a 503 once).
    deadline = time.monotonic() + 20
    while True:
        try:
            return registry.list_json(tenant=tenant)[0]
        except RegistryUnavailable:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


@pytest.mark.parametrize("crash", [_restart, _reinitialise])
def test_a_page_read_before_a_crash_is_not_handed_out_after_it(pg, database_url, crash):
    tenant = TenantName(f"crash-{secrets.token_hex(4)}")
    pool = make_pool(database_url, max_size=2)
    read_pool = make_read_pool(database_url, max_size=2)
    try:
        registry = PostgresFleetRegistry(pool, read_pool=read_pool)
        registry.create(tenant)
        with psycopg.connect(database_url) as conn:
            # An id taken and given back without writing anything: the abort is its only WAL
            # record, and nothing writes it before the crash.
            (aborted,) = conn.execute("SELECT pg_current_xact_id()::text").fetchone()
            conn.rollback()
        before = registry.list_json(tenant=tenant)[0]  # remembered, under xmax = aborted + 1
        crash(pg, database_url)
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(
                "UPDATE instances SET reason = 'committed after the crash' WHERE tenant = %s",
                (tenant,),
            )
            (reused,) = conn.execute(
                "SELECT xmin::text FROM instances WHERE tenant = %s", (tenant,)
            ).fetchone()
        # The situation the memory must survive: the crash lost the abort, and the committed
        # write took the aborted transaction's id.
        assert reused == aborted, f"the server did not reuse {aborted} (gave {reused})"
        after = _list(registry, tenant)
    finally:
        pool.close()
        read_pool.close()
    assert "committed after the crash" not in before
    assert "committed after the crash" in after


def test_a_pool_reconnects_within_seconds_of_postgres_coming_back(pg, database_url):
    # psycopg_pool retries a lost connection after 1 s, then doubling: uncapped, after 10 s down
    # its next attempt came up to 8 s after Postgres was back, every request a 503 meanwhile
    # (shared/adapters/db.py, MAX_RECONNECT_DELAY).
    pool = make_pool(database_url, min_size=1, max_size=1, timeout=1)
    try:
        with pool.connection() as conn:
            conn.execute("SELECT 1")
        pg.crash()
        # The connection the crash broke.
        with pytest.raises(psycopg.OperationalError), pool.connection() as conn:
            conn.execute("SELECT 1")
        time.sleep(10)
        pg.start()
        back = time.monotonic()
        wait_until(lambda: _pool_answers(pool), 20, interval=0.1, what="a pooled connection")
        waited = time.monotonic() - back
    finally:
        pool.close()
    assert waited < 2 + 1.5, f"{waited:.1f} s after Postgres came back"


def _pool_answers(pool) -> bool:
    with pool.connection(timeout=0.2) as conn:
        return conn.execute("SELECT 1").fetchone() == (1,)
