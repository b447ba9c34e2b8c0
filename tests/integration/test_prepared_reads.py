"""db.run_prepared: a read statement through libpq itself, on a pooled psycopg connection (the
gateway's list, registry.list_json). Against the session's real Postgres."""

import gc
import threading
import uuid
from datetime import UTC, datetime

import psycopg
import pytest

from shared.adapters import db
from shared.adapters.db import PreparedRead, make_read_pool, read_connection, run_prepared
from shared.adapters.registry import _text_value
from shared.domain.errors import RegistryUnavailable


@pytest.fixture
def pool(migrated_database_url):
    pool = make_read_pool(
        migrated_database_url, max_size=1, application_name="dark-prepared-read-test"
    )
    yield pool
    pool.close()


def _prepared_names(conn: psycopg.Connection) -> set[str]:
    rows = conn.execute("SELECT name FROM pg_prepared_statements").fetchall()
    return {row[0] for row in rows if row[0].startswith("dark_")}


def test_psycopg_placeholders_become_libpqs_numbered_ones():
    statement = PreparedRead.of("probe", "SELECT %s, x FROM t WHERE a = %s AND b < (%s, %s)")
    assert statement.name == b"dark_probe"
    assert statement.text == b"SELECT $1, x FROM t WHERE a = $2 AND b < ($3, $4)"
    assert PreparedRead.of("none", "SELECT 1").text == b"SELECT 1"
    # Any other % (an escaped %%, a modulo) would be read differently by psycopg and by libpq.
    for query in ("SELECT 5 %% 2, %s", "SELECT '100%'"):
        with pytest.raises(ValueError, match="only %s placeholders"):
            PreparedRead.of("bad", query)


def test_a_prepared_read_answers_what_a_cursor_answers(pool):
    at = datetime(2026, 3, 1, 9, 0, 0, 7, tzinfo=UTC)
    ident = uuid.UUID("6f1c0d36-3a55-4bd4-9a0b-3f1d0c9a6e11")
    # Each parameter as list_json sends it: text, and each takes its type from its place.
    query = (
        "SELECT (%s || '!')::text, NULL::text,"
        " (%s = '2026-03-01T09:00:00.000007Z'::timestamptz)::text,"
        " (%s = '6f1c0d36-3a55-4bd4-9a0b-3f1d0c9a6e11'::uuid)::text, 'ünïcode «ok» 🙂'::text,"
        " 42::text"
    )
    params = ["tenant-ä 東京", _text_value(at), _text_value(ident)]
    with read_connection(pool, "down") as conn:
        rows = run_prepared(conn, PreparedRead.of("answers", query), params)
        expected = conn.execute(query, [params[0], at, ident]).fetchall()
    assert rows == expected
    assert rows == [("tenant-ä 東京!", None, "true", "true", "ünïcode «ok» 🙂", "42")]


def test_an_array_parameter_keeps_every_element_as_it_was(pool):
    values = ['say "hi"', "back\\slash", "a,b", "{braces}", " padded ", "NULL", ""]
    statement = PreparedRead.of("array", "SELECT x FROM unnest(%s::text[]) WITH ORDINALITY AS x")
    with read_connection(pool, "down") as conn:
        rows = run_prepared(conn, statement, [_text_value(values)])
    assert [row[0] for row in rows] == values


def test_a_statement_is_prepared_once_per_connection_and_again_when_the_server_lost_it(pool):
    statement = PreparedRead.of("once", "SELECT %s::int + 1")
    with read_connection(pool, "down") as conn:
        assert run_prepared(conn, statement, ["1"]) == [("2",)]
        assert run_prepared(conn, statement, ["2"]) == [("3",)]
        assert _prepared_names(conn) == {"dark_once"}
        # Gone from the server behind run_prepared's back: prepared again, not an error.
        conn.execute("DEALLOCATE ALL")
        assert run_prepared(conn, statement, ["3"]) == [("4",)]
        assert _prepared_names(conn) == {"dark_once"}
        # psycopg's own statements on the same connection are not disturbed, nor it by them.
        for n in range(7):
            assert conn.execute("SELECT %s::int * 2", [n]).fetchone() == (2 * n,)
        assert run_prepared(conn, statement, ["4"]) == [("5",)]
        assert any(
            name.startswith("_pg3_")
            for (name,) in conn.execute("SELECT name FROM pg_prepared_statements").fetchall()
        )


def test_a_new_connection_prepares_the_statement_afresh(migrated_database_url):
    statement = PreparedRead.of("fresh", "SELECT 7")
    for _ in range(2):
        with psycopg.connect(migrated_database_url, autocommit=True) as conn:
            assert run_prepared(conn, statement, []) == [("7",)]
            assert _prepared_names(conn) == {"dark_fresh"}


def test_only_the_latest_statements_stay_prepared_on_a_connection(pool, monkeypatch):
    monkeypatch.setattr(db, "PREPARED_PER_CONNECTION", 3)
    statements = {name: PreparedRead.of(name, f"SELECT '{name}'") for name in "abcd"}
    with read_connection(pool, "down") as conn:
        for name in "abca":  # a used again: b is now the one used longest ago
            assert run_prepared(conn, statements[name], []) == [(name,)]
        assert run_prepared(conn, statements["d"], []) == [("d",)]
        assert _prepared_names(conn) == {"dark_a", "dark_c", "dark_d"}
        # b again: prepared anew, in place of the one now used longest ago (c).
        assert run_prepared(conn, statements["b"], []) == [("b",)]
        assert _prepared_names(conn) == {"dark_a", "dark_d", "dark_b"}
        # The server lost them all: the one to make room for is already gone, and that is fine.
        conn.execute("DEALLOCATE ALL")
        assert run_prepared(conn, statements["c"], []) == [("c",)]
        assert _prepared_names(conn) == {"dark_c"}


def test_a_statement_the_server_holds_under_the_name_is_replaced(pool):
    # Prepared on the server but not recorded (an interrupt between the two, a DEALLOCATE that
    # failed): preparing it again must not fail for good with "already exists".
    with read_connection(pool, "down") as conn:
        conn.execute("PREPARE dark_wedge AS SELECT 'old'")
        for _ in range(2):
            assert run_prepared(conn, PreparedRead.of("wedge", "SELECT 'new'"), []) == [("new",)]


def test_a_closed_connections_statements_are_forgotten(migrated_database_url):
    statement = PreparedRead.of("forgotten", "SELECT 1")
    gc.collect()
    held = len(db._PREPARED)
    for _ in range(5):
        with psycopg.connect(migrated_database_url, autocommit=True) as conn:
            assert run_prepared(conn, statement, []) == [("1",)]
        del conn
    gc.collect()
    # None of the five is still held (earlier tests' connections may have gone meanwhile).
    assert len(db._PREPARED) <= held


def test_errors_are_psycopgs_and_leave_the_connection_ready(pool):
    with read_connection(pool, "down") as conn:
        with pytest.raises(psycopg.errors.DivisionByZero, match="division by zero"):
            run_prepared(conn, PreparedRead.of("zero", "SELECT 1 / %s::int"), ["0"])
        with pytest.raises(psycopg.errors.UndefinedTable):
            run_prepared(conn, PreparedRead.of("missing", "SELECT * FROM no_such_table"), [])
        conn.execute("SET statement_timeout = '50ms'")
        with pytest.raises(psycopg.errors.QueryCanceled):
            run_prepared(conn, PreparedRead.of("slow", "SELECT pg_sleep(1)"), [])
        conn.execute("RESET statement_timeout")
        # A code psycopg does not know is classed by its first two characters, as psycopg does:
        # class 57 (operator intervention) is an OperationalError, a 503 at the API.
        conn.execute(
            "CREATE FUNCTION pg_temp.intervene() RETURNS int LANGUAGE plpgsql AS"
            " $$BEGIN RAISE EXCEPTION 'stepped in' USING ERRCODE = '57Z01'; END$$"
        )
        with pytest.raises(psycopg.OperationalError, match="stepped in") as raised:
            run_prepared(conn, PreparedRead.of("intervene", "SELECT pg_temp.intervene()"), [])
        assert raised.value.diag.sqlstate == "57Z01"
        assert run_prepared(conn, PreparedRead.of("zero", "SELECT 1 / %s::int"), ["1"]) == [("1",)]
        # In a transaction it refuses: its statement would run inside someone else's.
        conn.autocommit = False
        conn.execute("SELECT 1")
        with pytest.raises(psycopg.ProgrammingError, match="idle connection"):
            run_prepared(conn, PreparedRead.of("one", "SELECT 1"), [])
        conn.rollback()
        conn.autocommit = True


def test_a_connection_the_server_dropped_is_unavailable_and_replaced(pool, migrated_database_url):
    statement = PreparedRead.of("dropped", "SELECT 1")
    with read_connection(pool, "down") as conn:
        assert run_prepared(conn, statement, []) == [("1",)]
    with psycopg.connect(migrated_database_url, autocommit=True) as admin:
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE application_name = 'dark-prepared-read-test'"
        )
    with pytest.raises(RegistryUnavailable, match="down"), read_connection(pool, "down") as conn:
        run_prepared(conn, statement, [])
    # The pool threw the broken connection away; the next one prepares the statement again.
    pool.check()
    with read_connection(pool, "down") as conn:
        assert run_prepared(conn, statement, []) == [("1",)]


def test_other_threads_run_while_postgres_works(pool):
    # libpq waits for the answer with the GIL released: a gateway worker's other requests go on.
    ticks = [0]
    done = threading.Event()

    def tick() -> None:  # each tick needs the GIL again after its sleep
        while not done.wait(0.01):
            ticks[0] += 1

    ticker = threading.Thread(target=tick)
    with read_connection(pool, "down") as conn:
        ticker.start()
        try:
            before = ticks[0]
            run_prepared(conn, PreparedRead.of("sleep", "SELECT pg_sleep(0.5)"), [])
            during = ticks[0] - before
        finally:
            done.set()
            ticker.join()
    # About 50 while Postgres sleeps; with the GIL held through the wait, none or one.
    assert during >= 10, during
