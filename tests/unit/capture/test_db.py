"""Database drivers recorded at the driver level: sqlite3, psycopg (sync and async), asyncpg, and SQLAlchemy on them.

Each statement is one "db" event with its normalised SQL, its parameters and what it returned; commits and
rollbacks are calls of their own; passwords in connection strings are never recorded.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from postgres import Cluster, cluster_with  # tests/support, on the path from tests/conftest.py

import fluxrun


@pytest.fixture(scope="module")
def postgres() -> Iterator[Cluster]:
    with cluster_with("CREATE TABLE orders (id serial PRIMARY KEY, note text, amount numeric)") as cluster:
        yield cluster


def db_events(captured) -> list[dict]:  # type: ignore[no-untyped-def]
    return captured.events("db")


def test_sqlite_statements_rows_and_commits_are_recorded(captured, tmp_path: Path) -> None:
    path = tmp_path / "shop.db"
    with sqlite3.connect(path) as setup:
        setup.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, note TEXT)")

    @fluxrun.capture
    def job() -> None:
        conn = sqlite3.connect(path)
        cur = conn.execute("INSERT INTO orders (note)\n   VALUES (?)", ("first",))
        conn.commit()
        rows = conn.execute("SELECT id, note FROM orders WHERE note = ?", ("first",)).fetchall()
        raise RuntimeError(f"{cur.lastrowid} {rows}")

    with pytest.raises(RuntimeError, match=r"1 \[\(1, 'first'\)\]"):
        job()
    connect, insert, commit, select = db_events(captured)
    assert connect["data"]["op"] == "connect" and connect["call"].startswith("sqlite3 connect ")
    assert insert["data"]["sql"] == "INSERT INTO orders (note) VALUES (?)"  # whitespace collapsed
    assert insert["data"]["params"] == ["first"]
    assert insert["data"]["result"]["lastrowid"] == 1 and insert["data"]["result"]["rowcount"] == 1
    assert commit["data"]["op"] == "commit"
    assert select["data"]["result"]["rows"] == [[1, "first"]]
    assert select["data"]["result"]["description"][0][0] == "id"
    assert select["site"].startswith(f"{__name__}:")  # the app's line


def test_sqlite_summary_label_has_no_literals(captured, tmp_path: Path) -> None:
    @fluxrun.capture
    def job() -> None:
        conn = sqlite3.connect(tmp_path / "x.db")
        conn.execute("SELECT 'alice@example.com', 42")
        raise RuntimeError("x")

    with pytest.raises(RuntimeError):
        job()
    [bundle] = captured.bundles()
    labels = [e["label"] for e in bundle.summary["events"] if e["kind"] == "db"]
    assert "sqlite3 execute SELECT ?, ?" in labels
    assert "alice" not in json.dumps(bundle.summary)
    assert bundle.summary["counts"]["db"] == 2


def test_rows_beyond_the_limit_are_recorded_truncated_and_marked(capture_with, tmp_path: Path) -> None:
    captured = capture_with(max_db_rows=3)

    @fluxrun.capture
    def job() -> None:
        conn = sqlite3.connect(tmp_path / "x.db")
        rows = conn.execute(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 10) SELECT i FROM n"
        ).fetchall()
        raise RuntimeError(len(rows))

    with pytest.raises(RuntimeError, match="10"):  # the app still read every row
        job()
    select = captured.events("db")[-1]
    assert select["data"]["result"]["rows"] == [[1], [2], [3]]
    assert select["data"]["result"]["truncated"] is True and select["data"]["result"]["limit"] == 3


def test_psycopg_statements_are_recorded_and_the_app_reads_its_rows(captured, postgres: Cluster) -> None:
    import psycopg
    from psycopg.rows import dict_row

    @fluxrun.capture
    def job() -> None:
        with psycopg.connect(postgres.dsn) as conn:
            conn.execute("INSERT INTO orders (note, amount) VALUES (%s, %s)", ("cap", 12))
            with conn.cursor(row_factory=dict_row) as cur:
                cur.execute("SELECT note, amount FROM orders WHERE note = %(note)s", {"note": "cap"})
                first = cur.fetchone()
            conn.rollback()
        raise RuntimeError(repr(first))

    with pytest.raises(RuntimeError, match=r"\{'note': 'cap', 'amount': Decimal\('12'\)\}"):
        job()
    connect, insert, select, rollback, *_ = db_events(captured)
    assert connect["data"]["server_version"] >= 100000
    assert insert["data"]["params"] == ["cap", 12] and insert["data"]["result"]["rowcount"] == 1
    assert insert["data"]["result"]["status"] == "INSERT 0 1"
    assert select["data"]["params"] == {"note": "cap"}
    assert select["data"]["result"]["rows"] == [["cap", {"$t": "decimal", "v": "12"}]]
    assert rollback["data"]["op"] == "rollback"


def test_psycopg_execute_keywords_reach_psycopg_inside_and_outside_a_capture(captured, postgres: Cluster) -> None:
    """`prepare=True` makes psycopg prepare the statement on the server at once (pg_prepared_statements shows it),
    whether FluxRun only forwards the call or records it; `binary=` and a bad keyword behave as without FluxRun."""
    import psycopg

    def prepared(conn: psycopg.Connection) -> list[str]:
        rows = conn.execute("SELECT statement FROM pg_prepared_statements", prepare=False).fetchall()
        return sorted(row[0] for row in rows)

    with psycopg.connect(postgres.dsn, autocommit=True) as conn:
        assert conn.execute("SELECT 1 + %s", (1,), prepare=True).fetchone() == (2,)
        assert conn.cursor().execute("SELECT 2 + %s", (1,), prepare=True, binary=True).fetchone() == (3,)
        with pytest.raises(TypeError, match="colour"):
            conn.cursor().execute("SELECT 1", colour="red")
        outside = prepared(conn)

    @fluxrun.capture
    def job() -> list[str]:
        with psycopg.connect(postgres.dsn, autocommit=True) as conn:
            assert conn.execute("SELECT 3 + %s", (1,), prepare=True).fetchone() == (4,)
            return prepared(conn)

    inside = job()
    assert outside == ["SELECT 1 + $1", "SELECT 2 + $1"]
    assert inside == ["SELECT 3 + $1"]


@pytest.mark.anyio
async def test_async_psycopg_execute_keywords_reach_psycopg_inside_and_outside_a_capture(
    captured, postgres: Cluster
) -> None:
    import psycopg

    async def prepared(conn: psycopg.AsyncConnection) -> list[str]:
        cursor = await conn.execute("SELECT statement FROM pg_prepared_statements", prepare=False)
        return sorted(row[0] for row in await cursor.fetchall())

    async with await psycopg.AsyncConnection.connect(postgres.dsn, autocommit=True) as conn:
        assert await (await conn.execute("SELECT 1 + %s", (1,), prepare=True)).fetchone() == (2,)
        with pytest.raises(TypeError, match="colour"):
            await conn.cursor().execute("SELECT 1", colour="red")
        outside = await prepared(conn)

    @fluxrun.capture
    async def job() -> list[str]:
        async with await psycopg.AsyncConnection.connect(postgres.dsn, autocommit=True) as conn:
            assert await (await conn.execute("SELECT 3 + %s", (1,), prepare=True)).fetchone() == (4,)
            return await prepared(conn)

    inside = await job()
    assert outside == ["SELECT 1 + $1"] and inside == ["SELECT 3 + $1"]


@pytest.mark.anyio
async def test_psycopg_async_statements_are_recorded(captured, postgres: Cluster) -> None:
    import psycopg

    @fluxrun.capture
    async def job() -> None:
        async with await psycopg.AsyncConnection.connect(postgres.dsn) as conn:
            cur = await conn.execute("SELECT %s::int + 1", (41,))
            value = (await cur.fetchone())[0]
        raise RuntimeError(value)

    with pytest.raises(RuntimeError, match="42"):
        await job()
    ops = [e["data"]["op"] for e in db_events(captured)]
    assert ops == ["connect", "execute", "commit"]
    assert db_events(captured)[1]["data"]["result"]["rows"] == [[42]]


@pytest.mark.anyio
async def test_asyncpg_calls_and_transactions_are_recorded(captured, postgres: Cluster) -> None:
    import asyncpg

    @fluxrun.capture
    async def job() -> None:
        conn = await asyncpg.connect(f"postgresql://postgres@127.0.0.1:{postgres.port}/postgres")
        try:
            async with conn.transaction():
                await conn.execute("INSERT INTO orders (note) VALUES ($1)", "apg")
            row = await conn.fetchrow("SELECT note FROM orders WHERE note = $1", "apg")
        finally:
            await conn.close()
        raise RuntimeError(row["note"])

    with pytest.raises(RuntimeError, match="apg"):
        await job()
    ops = [e["data"]["op"] for e in db_events(captured)]
    assert ops == ["connect", "begin", "execute", "commit", "fetchrow"]
    assert db_events(captured)[2]["data"]["result"]["status"] == "INSERT 0 1"
    assert db_events(captured)[4]["data"]["result"]["rows"] == [["apg"]]


def test_dsn_passwords_are_never_recorded(captured, postgres: Cluster) -> None:
    import psycopg

    secret = "s3cr3t-Pa55"

    @fluxrun.capture
    def job() -> None:
        psycopg.connect(f"{postgres.dsn} password={secret}").close()
        psycopg.connect(f"postgresql://postgres:{secret}@127.0.0.1:{postgres.port}/postgres").close()
        psycopg.connect(postgres.dsn, password=secret).close()
        raise RuntimeError("x")

    with pytest.raises(RuntimeError):
        job()
    [bundle] = captured.bundles()
    assert secret not in json.dumps(bundle.payload) and secret not in json.dumps(bundle.summary)
    calls = [e["call"] for e in db_events(captured) if e["data"]["op"] == "connect"]
    assert len(calls) == 3 and all("[Filtered]" in c for c in calls)


def test_sqlalchemy_orm_over_psycopg_is_recorded_with_no_declaration(captured, postgres: Cluster) -> None:
    from sqlalchemy import create_engine, text
    from sqlalchemy.orm import Session

    engine = create_engine(f"postgresql+psycopg://postgres@127.0.0.1:{postgres.port}/postgres")

    @fluxrun.capture
    def job() -> None:
        with Session(engine) as session:
            session.execute(text("INSERT INTO orders (note) VALUES (:note)"), {"note": "orm"})
            session.commit()
        raise RuntimeError("x")

    with pytest.raises(RuntimeError):
        job()
    engine.dispose()
    sqls = [e["data"].get("sql") for e in db_events(captured)]
    assert "INSERT INTO orders (note) VALUES (%(note)s::VARCHAR)" in sqls or any(
        s and s.startswith("INSERT INTO orders") for s in sqls
    )
    assert "commit" in [e["data"]["op"] for e in db_events(captured)]


def test_psycopg_transaction_blocks_are_recorded_as_calls(captured, postgres: Cluster) -> None:
    import psycopg

    @fluxrun.capture
    def job() -> None:
        with psycopg.connect(postgres.dsn) as conn:
            with conn.transaction():
                conn.execute("INSERT INTO orders (note) VALUES ('tx')")
                with conn.transaction(savepoint_name="inner"):
                    conn.execute("INSERT INTO orders (note) VALUES ('sp')")
        raise RuntimeError("x")

    with pytest.raises(RuntimeError):
        job()
    ops = [(e["data"]["op"], e["data"].get("savepoint")) for e in db_events(captured)]
    assert ops == [
        ("connect", None), ("begin", None), ("execute", None), ("begin", "inner"), ("execute", None),
        ("commit", "inner"), ("commit", None), ("commit", None),
    ]  # fmt: skip


@pytest.mark.anyio
async def test_asyncpg_prepared_statements_are_recorded(captured, postgres: Cluster) -> None:
    import asyncpg

    @fluxrun.capture
    async def job() -> None:
        conn = await asyncpg.connect(f"postgresql://postgres@127.0.0.1:{postgres.port}/postgres")
        try:
            stmt = await conn.prepare("SELECT $1::int + 1 AS answer")
            value = await stmt.fetchval(41)
        finally:
            await conn.close()
        raise RuntimeError(value)

    with pytest.raises(RuntimeError, match="42"):
        await job()
    _, prepare, fetchval = db_events(captured)
    assert prepare["data"]["op"] == "prepare" and prepare["data"]["sql"] == "SELECT $1::int + 1 AS answer"
    assert prepare["data"]["result"]["attributes"][0][:2] == ["answer", 23]
    assert fetchval["data"]["op"] == "fetchval" and fetchval["data"]["prepared"] is True
    assert fetchval["data"]["params"] == [41] and fetchval["data"]["result"]["value"] == 42


def test_a_warm_pool_connection_brings_its_setup_profile(captured, postgres: Cluster) -> None:
    """A connection opened before the execution (a warm pool) is recorded once, at its first use, with what
    SQLAlchemy asked while setting it up; the execution's own statements come after it; no password."""
    from sqlalchemy import create_engine, text

    engine = create_engine(f"postgresql+psycopg://postgres:s3cr3t-Pa55@127.0.0.1:{postgres.port}/postgres")
    with engine.connect() as warm:  # outside any capture: the pool connects and the dialect initialises
        warm.execute(text("SELECT 1"))

    @fluxrun.capture
    def job() -> None:
        with engine.connect() as conn:
            conn.execute(text("SELECT 2"))
        raise RuntimeError("x")

    with pytest.raises(RuntimeError):
        job()
    engine.dispose()
    connect, *rest = db_events(captured)
    assert connect["data"]["op"] == "connect" and connect["data"]["opened"] == "before"
    setup_sql = [s.get("sql") for s in connect["data"]["setup"]]
    assert "show standard_conforming_strings" in setup_sql and "SELECT 1" not in setup_sql
    assert [e["data"].get("sql") for e in rest if e["data"]["op"] == "execute"] == ["SELECT 2"]
    [bundle] = captured.bundles()
    assert "s3cr3t-Pa55" not in json.dumps(bundle.payload)


@pytest.mark.parametrize(
    ("sql", "limit"),
    [
        ("SELECT 1", 10_000),
        ("SELECT 1 AS a, 'x' AS b, NULL::int AS c, 2.5::float8 AS d", 10_000),
        ("SELECT g, g::text FROM generate_series(1, 5) g", 10_000),
        ("SELECT g FROM generate_series(1, 5) g", 3),
        ("SELECT g FROM generate_series(1, 5) g", 0),
        ("SELECT g FROM generate_series(1, 0) g", 10_000),
        ("SELECT '2024-03-31 01:30:00+00'::timestamptz AS t, 1.5::numeric AS n, '\\x01'::bytea AS b", 10_000),
        ("UPDATE orders SET note = note WHERE false", 10_000),
    ],
)
def test_psycopg_direct_answer_records_what_the_fetching_snapshot_records(
    postgres: Cluster, sql: str, limit: int
) -> None:
    """The answer read straight from the result (the capture's path, formatted when the execution is sealed,
    after the cursor moved on and the connection closed) is, field for field and in the same order, what
    reading it through the cursor and `rows_result` records at once (zones, truncation and status included)."""
    import psycopg
    from psycopg.rows import tuple_row

    from fluxrun.interceptors import db_psycopg

    with psycopg.connect(postgres.dsn, autocommit=True) as conn:
        conn.execute("SET TimeZone = 'Europe/Paris'")  # timestamptz values come back in a named zone
        cur = conn.execute(sql)
        taken = db_psycopg._direct_answer(cur, limit)
        fetched = db_psycopg._snapshot(cur, tuple_row, limit)
        assert taken is not None
        if cur.description is not None:  # the cursor was left where the app reads it
            assert cur.fetchall() == conn.execute(sql).fetchall()
        cur.execute("SELECT 'another statement', 2")  # the cursor moves on; the connection then closes
    assert json.dumps(db_psycopg._answer_data({"result": taken})["result"]) == json.dumps(fetched)


def test_psycopg_answer_that_cannot_be_formatted_when_sealed_is_recorded_without_it() -> None:
    """A deferred answer whose formatting fails at seal leaves the statement without its answer (replay refuses
    it) and counts an internal error; the rest of the execution is still sealed."""
    from fluxrun._internal import internal_errors
    from fluxrun.interceptors import db_psycopg

    before = internal_errors["psycopg capture"]
    data = {"sql": "SELECT 1", "result": (object(), "utf-8", [(1,)], 1, b"SELECT 1", 0, 10)}
    assert db_psycopg._answer_data(data) == {"sql": "SELECT 1", "result": None}
    assert internal_errors["psycopg capture"] == before + 1
