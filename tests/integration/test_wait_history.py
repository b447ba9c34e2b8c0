"""PostgresWaitHistory against the real Postgres (migrations/0009_wait_samples.sql)."""

import uuid

import pytest

from shared.adapters.waits import RECENT, PostgresWaitHistory
from shared.domain.waits import WaitKind, WaitSample


@pytest.fixture
def history(pg_pool):
    """An empty history (the table is shared by every worker, so by every test too)."""
    with pg_pool.connection() as conn:
        conn.execute("DELETE FROM wait_samples")
    yield PostgresWaitHistory(pg_pool)
    with pg_pool.connection() as conn:
        conn.execute("DELETE FROM wait_samples")


def test_samples_come_back_newest_first_and_by_kind(history):
    history.record(WaitKind.CREATE, uuid.uuid4(), WaitSample(4.0, 5.0))
    history.record(WaitKind.BOOT, uuid.uuid4(), WaitSample(9.5, 10.25))
    history.record(WaitKind.CREATE, uuid.uuid4(), WaitSample(4.5, 4.75))

    assert history.recent(WaitKind.CREATE) == [WaitSample(4.5, 4.75), WaitSample(4.0, 5.0)]
    assert history.recent(WaitKind.BOOT) == [WaitSample(9.5, 10.25)]


def test_only_an_instances_first_sample_of_a_kind_counts(history):
    instance_id = uuid.uuid4()
    history.record(WaitKind.BOOT, instance_id, WaitSample(2.0, 2.5))
    history.record(WaitKind.BOOT, instance_id, WaitSample(7.0, 9.0))  # a later step, seen again
    history.record(WaitKind.CREATE, instance_id, WaitSample(1.0, 1.5))

    assert history.recent(WaitKind.BOOT) == [WaitSample(2.0, 2.5)]
    assert history.recent(WaitKind.CREATE) == [WaitSample(1.0, 1.5)]


def test_the_table_keeps_only_the_newest_samples_of_each_kind(history, pg_pool):
    for i in range(RECENT + 5):
        history.record(WaitKind.CREATE, uuid.uuid4(), WaitSample(i, i + 1))
    history.record(WaitKind.BOOT, uuid.uuid4(), WaitSample(1.0, 2.0))

    newest = history.recent(WaitKind.CREATE)
    assert [s.not_done_at for s in newest] == [float(i) for i in range(RECENT + 4, 4, -1)]
    with pg_pool.connection() as conn:
        counts = dict(conn.execute("SELECT kind, count(*) FROM wait_samples GROUP BY kind"))
    assert counts == {"create": RECENT, "boot": 1}


def test_the_database_refuses_a_sample_that_does_not_bracket_forwards(pg_pool):
    import psycopg

    with pytest.raises(psycopg.errors.CheckViolation), pg_pool.connection() as conn:
        conn.execute(
            "INSERT INTO wait_samples (kind, instance_id, not_done_at, done_at)"
            " VALUES ('boot', %s, 5, 4)",
            (uuid.uuid4(),),
        )
