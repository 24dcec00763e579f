"""Replay answers database calls from the tape: nothing connects, no statement reaches a database.

Each scenario inserts rows and fails for real, then is replayed through `fluxrun.replay.run`. Writes are
counted on the real database by a trigger that bumps a counter on every INSERT/UPDATE/DELETE, so "zero side
effects" is measured, not assumed. Replays run in-process (FLUXRUN_REPLAY_ISOLATE=0) with the database up
and reachable, the hardest case, and in the default isolated child.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from postgres import Cluster, cluster_with  # tests/support, on the path from tests/conftest.py
from sqlalchemy import String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

import fluxrun
from fluxrun.errors import ReplayDivergence

PG_SCHEMA = """
CREATE TABLE orders (id serial PRIMARY KEY, note text);
CREATE TABLE kinds (id serial PRIMARY KEY, b bytea, n numeric, t timestamptz, u uuid, a int[], j jsonb);
CREATE TABLE writes (n bigint NOT NULL);
INSERT INTO writes VALUES (0);
CREATE FUNCTION count_write() RETURNS trigger AS $$ BEGIN UPDATE writes SET n = n + 1; RETURN NULL; END $$
    LANGUAGE plpgsql;
CREATE TRIGGER orders_writes AFTER INSERT OR UPDATE OR DELETE ON orders FOR EACH ROW EXECUTE FUNCTION count_write();
CREATE TRIGGER kinds_writes AFTER INSERT OR UPDATE OR DELETE ON kinds FOR EACH ROW EXECUTE FUNCTION count_write();
"""

STATE: dict[str, object] = {"dsn": "", "sqlite": "", "note": "written by the request"}


@pytest.fixture(scope="module")
def postgres() -> Iterator[Cluster]:
    with cluster_with(PG_SCHEMA) as cluster:
        yield cluster


@pytest.fixture(autouse=True)
def in_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLUXRUN_REPLAY_ISOLATE", "0")
    STATE["note"] = "written by the request"


def pg_writes(dsn: str) -> tuple[int, int]:
    import psycopg

    with psycopg.connect(dsn) as conn:
        writes = conn.execute("SELECT n FROM writes").fetchone()[0]  # type: ignore[index]
        rows = conn.execute("SELECT count(*) FROM orders").fetchone()[0]  # type: ignore[index]
        return int(writes), int(rows)


def sqlite_writes(path: str) -> tuple[int, int]:
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT n FROM writes").fetchone()[0], conn.execute(
            "SELECT count(*) FROM orders"
        ).fetchone()[0]


@pytest.fixture
def sqlite_db(tmp_path: Path) -> str:
    path = str(tmp_path / "shop.db")
    with sqlite3.connect(path) as conn:
        conn.executescript(
            """
            CREATE TABLE orders (id INTEGER PRIMARY KEY, note TEXT);
            CREATE TABLE writes (n INTEGER NOT NULL); INSERT INTO writes VALUES (0);
            CREATE TRIGGER w1 AFTER INSERT ON orders BEGIN UPDATE writes SET n = n + 1; END;
            CREATE TRIGGER w2 AFTER UPDATE ON orders BEGIN UPDATE writes SET n = n + 1; END;
            CREATE TRIGGER w3 AFTER DELETE ON orders BEGIN UPDATE writes SET n = n + 1; END;
            """
        )
    STATE["sqlite"] = path
    return path


def replay(captured, function, **options):  # type: ignore[no-untyped-def]
    path = captured.files()[-1]
    return fluxrun.replay.run(path, captured.keys.replay, app=function, **options)


# -- the captured functions ----------------------------------------------------------------------------------
@fluxrun.capture
def sqlite_order() -> None:
    conn = sqlite3.connect(str(STATE["sqlite"]))
    cur = conn.execute("INSERT INTO orders (note) VALUES (?)", (STATE["note"],))
    conn.commit()
    rows = conn.execute("SELECT id, note FROM orders").fetchall()
    conn.close()
    raise RuntimeError(f"unexpected order {cur.lastrowid}: {rows}")


@fluxrun.capture
def sqlite_big_read() -> None:
    conn = sqlite3.connect(str(STATE["sqlite"]))
    rows = conn.execute(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 50) SELECT i FROM n"
    ).fetchall()
    raise RuntimeError(f"{len(rows)} rows")


@fluxrun.capture
def psycopg_order() -> None:
    import psycopg

    with psycopg.connect(str(STATE["dsn"])) as conn:
        new = conn.execute("INSERT INTO orders (note) VALUES (%s) RETURNING id", (STATE["note"],)).fetchone()
        total = conn.execute("SELECT count(*) FROM orders").fetchone()
    raise RuntimeError(f"unexpected order {new[0]} of {total[0]}")


@fluxrun.capture
async def psycopg_async_order() -> None:
    import psycopg

    async with await psycopg.AsyncConnection.connect(str(STATE["dsn"])) as conn:
        cur = await conn.execute("INSERT INTO orders (note) VALUES (%s) RETURNING id, note", (STATE["note"],))
        row = await cur.fetchone()
    raise RuntimeError(f"unexpected order {row}")


@fluxrun.capture
async def asyncpg_order() -> None:
    import asyncpg

    conn = await asyncpg.connect(str(STATE["dsn_url"]))
    try:
        async with conn.transaction():
            new = await conn.fetchval("INSERT INTO orders (note) VALUES ($1) RETURNING id", STATE["note"])
        rows = await conn.fetch("SELECT id, note FROM orders WHERE id = $1", new)
    finally:
        await conn.close()
    raise RuntimeError(f"unexpected order {[(r['id'], r['note']) for r in rows]}")


class Base(DeclarativeBase):
    pass


class Order(Base):
    __tablename__ = "orders"
    id: Mapped[int] = mapped_column(primary_key=True)
    note: Mapped[str] = mapped_column(String)


@fluxrun.capture
def sqlalchemy_orm_order() -> None:
    from sqlalchemy import create_engine, select
    from sqlalchemy.orm import Session

    engine = create_engine(str(STATE["sa_url"]))
    with Session(engine) as session:
        session.add(Order(note=str(STATE["note"])))
        session.commit()
        notes = session.scalars(select(Order.note).order_by(Order.id)).all()
    engine.dispose()
    raise RuntimeError(f"unexpected order among {len(notes)}: {notes[-1]}")


KINDS_SQL = "INSERT INTO kinds (b, n, t, u, a, j) VALUES (%s, %s, %s, %s, %s, %s) RETURNING b, n, t, u, a, j"


@fluxrun.capture
def psycopg_kinds() -> None:
    import datetime as dt
    import decimal
    import uuid

    import psycopg
    from psycopg.types.json import Jsonb

    values = (
        b"\x00\xffbin",
        decimal.Decimal("12345678901234567890.000000001"),
        dt.datetime(2024, 2, 29, 23, 59, 59, 123456, tzinfo=dt.timezone(dt.timedelta(hours=5, minutes=30))),
        uuid.UUID("12345678-1234-5678-1234-567812345678"),
        [1, None, 3],
        Jsonb({"a": [1, 2.5, None, True], "b": {"c": "é"}}),
    )
    with psycopg.connect(str(STATE["dsn"])) as conn:
        row = conn.execute(KINDS_SQL, values).fetchone()
    raise RuntimeError(repr([(type(v).__name__, v) for v in row]))


@fluxrun.capture
async def asyncpg_kinds() -> None:
    import datetime as dt
    import decimal
    import json
    import uuid

    import asyncpg

    conn = await asyncpg.connect(str(STATE["dsn_url"]))
    try:
        row = await conn.fetchrow(
            "INSERT INTO kinds (b, n, t, u, a, j) VALUES ($1, $2, $3, $4, $5, $6) RETURNING b, n, t, u, a, j",
            b"\x00\xffbin",
            decimal.Decimal("-0.000000000000000000001"),
            dt.datetime(2024, 2, 29, 23, 59, 59, 123456, tzinfo=dt.UTC),
            uuid.UUID("87654321-1234-5678-1234-567812345678"),
            [7, 8],
            json.dumps({"k": [1, {"x": None}]}),
        )
    finally:
        await conn.close()
    raise RuntimeError(repr([(type(v).__name__, v) for v in row.values()]))


# -- sqlite ---------------------------------------------------------------------------------------------------
def test_sqlite_replay_reproduces_and_writes_nothing(captured, sqlite_db: str) -> None:
    with pytest.raises(RuntimeError) as raised:
        sqlite_order()
    before = sqlite_writes(sqlite_db)
    assert before == (1, 1)
    result = replay(captured, sqlite_order)
    assert result.outcome == "reproduced", result.summary()
    assert result.new.message == str(raised.value)
    assert result.served["db"] == 4  # connect, insert, commit, select (close is not a call)
    assert result.unconsumed == []
    assert sqlite_writes(sqlite_db) == before


def test_sqlite_replay_with_the_file_gone_still_reproduces(captured, sqlite_db: str) -> None:
    with pytest.raises(RuntimeError):
        sqlite_order()
    Path(sqlite_db).unlink()
    result = replay(captured, sqlite_order)
    assert result.outcome == "reproduced", result.summary()
    assert not Path(sqlite_db).exists()  # connecting at replay did not even create the file


def test_a_changed_statement_diverges_showing_both(captured, sqlite_db: str) -> None:
    with pytest.raises(RuntimeError):
        sqlite_order()
    STATE["note"] = "a different note"
    with pytest.raises(ReplayDivergence) as diverged:
        replay(captured, sqlite_order)
    message = str(diverged.value)
    assert "written by the request" in message and "a different note" in message
    assert "INSERT INTO orders (note) VALUES (?)" in message


def test_a_truncated_result_is_refused_naming_the_limit(capture_with, sqlite_db: str) -> None:
    captured = capture_with(max_db_rows=10)
    with pytest.raises(RuntimeError, match="50 rows"):
        sqlite_big_read()
    with pytest.raises(ReplayDivergence, match=r"truncated at 10 rows.*max_db_rows \(FLUXRUN_MAX_DB_ROWS\)"):
        replay(captured, sqlite_big_read)


# -- PostgreSQL -------------------------------------------------------------------------------------------------
@pytest.fixture
def pg(postgres: Cluster) -> Cluster:
    STATE["dsn"] = postgres.dsn
    STATE["dsn_url"] = f"postgresql://postgres:hunter2@127.0.0.1:{postgres.port}/postgres"
    STATE["sa_url"] = f"postgresql+psycopg://postgres:hunter2@127.0.0.1:{postgres.port}/postgres"
    return postgres


@pytest.mark.parametrize(
    "function",
    [psycopg_order, psycopg_async_order, asyncpg_order, sqlalchemy_orm_order],
    ids=["psycopg", "psycopg-async", "asyncpg", "sqlalchemy-orm-psycopg"],
)
def test_postgres_replay_reproduces_and_writes_nothing(captured, pg: Cluster, function) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(RuntimeError) as raised:
        outcome = function()
        if asyncio.iscoroutine(outcome):
            asyncio.run(outcome)
    before = pg_writes(pg.dsn)
    result = replay(captured, function)
    assert result.outcome == "reproduced", result.summary()
    assert result.new.message == str(raised.value)
    assert result.served["db"] >= 3 and result.unconsumed == []
    assert pg_writes(pg.dsn) == before  # the database is up and reachable: still not one write


def test_postgres_replay_in_the_isolated_child_reproduces(captured, pg: Cluster, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("FLUXRUN_REPLAY_ISOLATE", "1")
    with pytest.raises(RuntimeError) as raised:
        psycopg_order()
    before = pg_writes(pg.dsn)
    result = replay(captured, psycopg_order)
    assert result.outcome == "reproduced", result.summary()
    assert result.new.message == str(raised.value)
    assert pg_writes(pg.dsn) == before


@fluxrun.capture
def psycopg_reads() -> None:
    import psycopg

    with psycopg.connect(str(STATE["dsn"])) as conn, conn.cursor() as cur:
        sql = "SELECT i FROM generate_series(1, 7) AS i"
        cur.execute(sql)
        read = [cur.fetchone(), cur.fetchmany(2), *cur, cur.fetchone(), cur.fetchall()]
        cur.execute(sql)
        read += [cur.fetchall(), type(cur).__name__, isinstance(cur, psycopg.Cursor)]
    raise RuntimeError(repr(read))


@fluxrun.capture
async def psycopg_async_reads() -> None:
    import psycopg

    async with await psycopg.AsyncConnection.connect(str(STATE["dsn"])) as conn, conn.cursor() as cur:
        await cur.execute("SELECT i FROM generate_series(1, 7) AS i")
        read = [await cur.fetchone(), await cur.fetchmany(2), *[row async for row in cur], await cur.fetchall()]
    raise RuntimeError(repr(read))


@pytest.mark.parametrize("function", [psycopg_reads, psycopg_async_reads], ids=["sync", "async"])
def test_every_way_of_reading_a_replayed_psycopg_cursor_reads_the_recorded_rows(captured, pg: Cluster, function):  # type: ignore[no-untyped-def]
    """fetchone, fetchmany, iteration and fetchall of a replayed cursor, in any mix, read exactly what they read
    live, and the cursor is still the class the app made (psycopg's own fetches run unpatched elsewhere)."""
    with pytest.raises(RuntimeError) as raised:
        outcome = function()
        if asyncio.iscoroutine(outcome):
            asyncio.run(outcome)
    result = replay(captured, function)
    assert result.outcome == "reproduced", result.summary()
    assert result.new.message == str(raised.value)


@pytest.mark.parametrize("function", [psycopg_kinds, asyncpg_kinds], ids=["psycopg", "asyncpg"])
def test_column_values_round_trip_exactly(captured, pg: Cluster, function) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(RuntimeError) as raised:
        outcome = function()
        if asyncio.iscoroutine(outcome):
            asyncio.run(outcome)
    message = str(raised.value)
    for name in ("bytes", "Decimal", "datetime", "UUID", "list"):
        assert f"('{name}'," in message
    result = replay(captured, function)
    assert result.outcome == "reproduced", result.summary()
    assert result.new.message == message  # types and values, time zone and precision included


# -- server-side (named) cursors ----------------------------------------------------------------------------------
STREAM_SQL = "SELECT i, i * 2 AS twice FROM generate_series(1, 10) AS i WHERE i > %s ORDER BY i"


@fluxrun.capture
def psycopg_server_cursor() -> None:
    import psycopg

    with psycopg.connect(str(STATE["dsn"])) as conn:
        with conn.cursor(name="orders_stream") as cur:
            cur.itersize = 3
            cur.execute(STREAM_SQL, (1,))
            read = [cur.fetchone(), cur.fetchmany(2), [row for _, row in zip(range(4), cur, strict=False)]]
            read += [cur.fetchall(), cur.fetchone(), cur.rownumber, [c.name for c in cur.description or ()]]
        conn.execute("INSERT INTO orders (note) VALUES (%s)", (STATE["note"],))
        conn.commit()
    raise RuntimeError(repr(read))


@fluxrun.capture
async def psycopg_async_server_cursor() -> None:
    import psycopg
    from psycopg.rows import dict_row

    async with await psycopg.AsyncConnection.connect(str(STATE["dsn"])) as conn:
        async with conn.cursor(name="orders_stream", row_factory=dict_row) as cur:
            cur.itersize = 4
            await cur.execute(STREAM_SQL, (2,))
            read = [await cur.fetchmany(3), [row async for row in cur]]
        await conn.execute("INSERT INTO orders (note) VALUES (%s)", (STATE["note"],))
        await conn.commit()
    raise RuntimeError(repr(read))


@fluxrun.capture
def sqlalchemy_stream_results() -> None:
    from sqlalchemy import create_engine, select, text
    from sqlalchemy.orm import Session

    engine = create_engine(str(STATE["sa_url"]))
    with engine.connect() as conn:
        query = text("SELECT i FROM generate_series(1, 9) AS i WHERE i > :low ORDER BY i")
        result = conn.execute(query.execution_options(stream_results=True, max_row_buffer=3), {"low": 2})
        read = [tuple(result.fetchmany(2)), [tuple(row) for row in result]]
        # three rows, so that the ORM read below has them whichever tests ran before on this cluster
        conn.execute(text("INSERT INTO orders (note) VALUES (:note), (:note), (:note)"), {"note": STATE["note"]})
        conn.commit()
    with Session(engine) as session:  # the ORM's yield_per streams through a named cursor too
        ids = session.scalars(select(Order.id).order_by(Order.id.desc()).execution_options(yield_per=2))
        read.append([next(ids), next(ids), next(ids)])
        ids.close()  # read in part: its named cursor is closed here, not left to the collector
    engine.dispose()
    raise RuntimeError(repr(read))


@pytest.mark.parametrize(
    "function",
    [psycopg_server_cursor, psycopg_async_server_cursor, sqlalchemy_stream_results],
    ids=["psycopg", "psycopg-async", "sqlalchemy-stream-results"],
)
def test_a_server_side_cursor_replays_the_rows_the_app_read_and_writes_nothing(captured, pg: Cluster, function) -> None:  # type: ignore[no-untyped-def]
    """A named cursor (DECLARE, then a FETCH per fetch or page) is recorded as one statement with the rows the
    app fetched, in order; at replay psycopg's own fetch, iteration and paging logic runs on those rows."""
    with pytest.raises(RuntimeError) as raised:
        outcome = function()
        if asyncio.iscoroutine(outcome):
            asyncio.run(outcome)
    declared = [e["data"]["result"] for e in captured.payloads()[-1]["events"] if e["data"].get("op") == "declare"]
    assert declared and all(result["rows"] for result in declared)
    assert declared[0]["complete"] is True  # read to its end
    before = pg_writes(pg.dsn)
    result = replay(captured, function)
    assert result.outcome == "reproduced", result.summary()
    assert result.new.message == str(raised.value)
    assert result.unconsumed == []
    assert pg_writes(pg.dsn) == before


@fluxrun.capture
def psycopg_server_cursor_first_rows() -> None:
    import psycopg

    with psycopg.connect(str(STATE["dsn"])) as conn, conn.cursor(name="first_rows") as cur:
        cur.execute(STREAM_SQL, (0,))
        rows = cur.fetchmany(int(STATE.get("wanted", 2)))  # type: ignore[call-overload]
    raise RuntimeError(f"first rows {rows}")


def test_reading_past_the_rows_read_at_capture_from_a_server_side_cursor_is_refused(captured, pg: Cluster) -> None:
    STATE["wanted"] = 2
    with pytest.raises(RuntimeError):
        psycopg_server_cursor_first_rows()
    STATE["wanted"] = 5  # a fix that reads further: the recording has only the two rows the app fetched
    try:
        with pytest.raises(ReplayDivergence, match=r"2 rows the app fetched from this server-side cursor"):
            replay(captured, psycopg_server_cursor_first_rows)
    finally:
        STATE.pop("wanted")


@fluxrun.capture
def psycopg_stream() -> None:
    import psycopg

    with psycopg.connect(str(STATE["dsn"])) as conn:
        read: list[object] = [list(conn.cursor().stream(STREAM_SQL, (3,)))]
        read.append(next(iter(conn.cursor().stream(STREAM_SQL, (8,)))))  # left after one row
        conn.execute("INSERT INTO orders (note) VALUES (%s)", (STATE["note"],))
        conn.commit()
    with psycopg.connect(str(STATE["dsn"]), autocommit=True) as conn:
        got: list[object] = []
        try:
            for (value,) in conn.cursor().stream("SELECT 10 / (5 - i) FROM generate_series(1, 8) AS i"):
                got.append(value)
        except psycopg.errors.DivisionByZero as exc:  # after the rows before it
            got.append(f"{type(exc).__name__}: {exc}")
        read.append(got)
    raise RuntimeError(repr(read))


@fluxrun.capture
async def psycopg_async_stream() -> None:
    import psycopg
    from psycopg.rows import dict_row

    async with await psycopg.AsyncConnection.connect(str(STATE["dsn"])) as conn:
        cur = conn.cursor(row_factory=dict_row)
        read = [row async for row in cur.stream(STREAM_SQL, (4,))]
        await conn.execute("INSERT INTO orders (note) VALUES (%s)", (STATE["note"],))
        await conn.commit()
    raise RuntimeError(repr(read))


@pytest.mark.parametrize("function", [psycopg_stream, psycopg_async_stream], ids=["sync", "async"])
def test_a_streamed_query_replays_the_rows_the_app_read_and_writes_nothing(captured, pg: Cluster, function) -> None:  # type: ignore[no-untyped-def]
    """`Cursor.stream()` (rows one by one from the server) is recorded as one `stream` statement with the rows
    fetched, and an error that came after some of them after those rows."""
    with pytest.raises(RuntimeError) as raised:
        outcome = function()
        if asyncio.iscoroutine(outcome):
            asyncio.run(outcome)
    streams = [e for e in captured.payloads()[-1]["events"] if e["data"].get("op") == "stream"]
    assert streams and streams[0]["data"]["result"]["complete"] is True
    before = pg_writes(pg.dsn)
    result = replay(captured, function)
    assert result.outcome == "reproduced", result.summary()
    assert result.new.message == str(raised.value)
    assert result.unconsumed == []
    assert pg_writes(pg.dsn) == before


@fluxrun.capture
async def asyncpg_cursors() -> None:
    import asyncpg

    conn = await asyncpg.connect(str(STATE["dsn_url"]))
    try:
        async with conn.transaction():  # asyncpg's cursors live in a transaction
            query = "SELECT i FROM generate_series(1, 7) AS i WHERE i > $1"
            streamed = [r["i"] async for r in conn.cursor(query, 1, prefetch=2)]
            cur = await conn.cursor("SELECT i, i * 2 AS twice FROM generate_series(1, 9) AS i")
            first, skipped = await cur.fetchrow(), await cur.forward(3)
            some, rest, after = await cur.fetch(3), await cur.fetch(10), await cur.fetch(1)
            statement = await conn.prepare("SELECT i FROM generate_series(1, $1::int) AS i")
            prepared = [r[0] async for r in statement.cursor(4, prefetch=3)]
            await conn.execute("INSERT INTO orders (note) VALUES ($1)", STATE["note"])
    finally:
        await conn.close()
    read = [streamed, dict(first), skipped, [tuple(r) for r in some], [r["twice"] for r in rest], after, prepared]
    raise RuntimeError(repr(read))


@fluxrun.capture
async def sqlalchemy_asyncpg_stream() -> None:
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(str(STATE["sa_async_url"]))
    async with engine.connect() as conn:
        query = text("SELECT i FROM generate_series(1, 9) AS i WHERE i > :low ORDER BY i")
        result = await conn.stream(query.execution_options(max_row_buffer=2), {"low": 3})
        read = [row[0] async for row in result]
        await conn.execute(text("INSERT INTO orders (note) VALUES (:note)"), {"note": STATE["note"]})
        await conn.commit()
    await engine.dispose()
    raise RuntimeError(repr(read))


@pytest.mark.parametrize("function", [asyncpg_cursors, sqlalchemy_asyncpg_stream], ids=["asyncpg", "sqlalchemy"])
def test_asyncpg_cursors_replay_the_rows_each_fetch_read_and_write_nothing(captured, pg: Cluster, function) -> None:  # type: ignore[no-untyped-def]
    """A cursor iterated with prefetch, a cursor fetched, moved forward and fetched past its end, a prepared
    statement's cursor, and SQLAlchemy's `stream()` on asyncpg: each portal and each fetch is a recorded call,
    answered in order at replay."""
    STATE["sa_async_url"] = f"postgresql+asyncpg://postgres:hunter2@127.0.0.1:{pg.port}/postgres"
    with pytest.raises(RuntimeError) as raised:
        asyncio.run(function())
    before = pg_writes(pg.dsn)
    result = replay(captured, function)
    assert result.outcome == "reproduced", result.summary()
    assert result.new.message == str(raised.value)
    assert result.unconsumed == []
    assert pg_writes(pg.dsn) == before


# -- transaction blocks and prepared statements ------------------------------------------------------------------
@fluxrun.capture
def psycopg_transaction_order() -> None:
    import psycopg

    with psycopg.connect(str(STATE["dsn"])) as conn:
        with conn.transaction():
            conn.execute("INSERT INTO orders (note) VALUES (%s)", (STATE["note"],))
            with conn.transaction():  # a savepoint
                conn.execute("INSERT INTO orders (note) VALUES (%s)", ("nested",))
        total = conn.execute("SELECT count(*) FROM orders").fetchone()
    raise RuntimeError(f"unexpected total {total[0]}")


@fluxrun.capture
async def asyncpg_prepared_order() -> None:
    import asyncpg

    conn = await asyncpg.connect(str(STATE["dsn_url"]))
    try:
        insert = await conn.prepare("INSERT INTO orders (note) VALUES ($1) RETURNING id, note")
        row = await insert.fetchrow(STATE["note"])
        select = await conn.prepare("SELECT id, note FROM orders WHERE id = $1")
        names = [a.name for a in select.get_attributes()]
        rows = await select.fetch(row["id"])
        status = select.get_statusmsg()
    finally:
        await conn.close()
    raise RuntimeError(f"unexpected order {names} {[tuple(r) for r in rows]} {status}")


@fluxrun.capture
async def sqlalchemy_asyncpg_order() -> None:
    from sqlalchemy import select
    from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

    engine = create_async_engine(str(STATE["sa_async_url"]))
    async with AsyncSession(engine) as session:
        session.add(Order(note=str(STATE["note"])))
        await session.commit()
        notes = (await session.scalars(select(Order.note).order_by(Order.id))).all()
    await engine.dispose()
    raise RuntimeError(f"unexpected order among {len(notes)}: {notes[-1]}")


@pytest.mark.parametrize(
    "function",
    [psycopg_transaction_order, asyncpg_prepared_order, sqlalchemy_asyncpg_order],
    ids=["psycopg-transaction", "asyncpg-prepare", "sqlalchemy-asyncpg"],
)
def test_transactions_and_prepared_statements_replay_and_write_nothing(captured, pg: Cluster, function) -> None:  # type: ignore[no-untyped-def]
    STATE["sa_async_url"] = f"postgresql+asyncpg://postgres:hunter2@127.0.0.1:{pg.port}/postgres"
    with pytest.raises(RuntimeError) as raised:
        outcome = function()
        if asyncio.iscoroutine(outcome):
            asyncio.run(outcome)
    before = pg_writes(pg.dsn)
    result = replay(captured, function)
    assert result.outcome == "reproduced", result.summary()
    assert result.new.message == str(raised.value)
    assert result.unconsumed == []
    assert pg_writes(pg.dsn) == before


# -- warm connection pools: captured on a pool that had already connected, replayed in a fresh process -----------
WARM_APP = '''
"""An app whose SQLAlchemy engine is created at import and connected before the failing request."""
import os

import fluxrun
from sqlalchemy import String, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

URL = os.environ.get("DATABASE_URL", "postgresql+DRIVER://app@db.internal/app")


class Base(DeclarativeBase):
    pass


class Order(Base):
    __tablename__ = "orders"
    id: Mapped[int] = mapped_column(primary_key=True)
    note: Mapped[str] = mapped_column(String)


if "+asyncpg" in URL:
    from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

    engine = create_async_engine(URL)

    async def warm() -> None:
        async with AsyncSession(engine) as session:
            await session.scalar(select(Order.id).limit(1))

    @fluxrun.capture
    async def order(note: str) -> None:
        async with AsyncSession(engine) as session:
            session.add(Order(note=note))
            await session.commit()
            notes = (await session.scalars(select(Order.note).order_by(Order.id))).all()
        raise RuntimeError(f"unexpected order among {len(notes)}: {notes[-1]}")
else:
    from sqlalchemy import create_engine

    engine = create_engine(URL)

    def warm() -> None:
        with Session(engine) as session:
            session.scalar(select(Order.id).limit(1))

    @fluxrun.capture
    def order(note: str) -> None:
        with Session(engine) as session:
            session.add(Order(note=note))
            session.commit()
            notes = session.scalars(select(Order.note).order_by(Order.id)).all()
        raise RuntimeError(f"unexpected order among {len(notes)}: {notes[-1]}")
'''

FRESH_REPLAY = """
import json, sys
import fluxrun
result = fluxrun.replay.run(sys.argv[1], sys.argv[2])
print(json.dumps({"outcome": result.outcome, "message": result.new.message, "summary": result.summary(),
                  "unconsumed": [e["call"] for e in result.unconsumed]}))
"""


def replay_in_a_fresh_process(bundle: Path, key: Path, app_dir: Path) -> dict[str, object]:
    """`fluxrun.replay.run` in a new interpreter without the app's DATABASE_URL (a CI job)."""
    import json
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "FLUXRUN_REPLAY_ISOLATE")}
    env["PYTHONPATH"] = os.pathsep.join([str(app_dir), env.get("PYTHONPATH", "")])
    done = subprocess.run(
        [sys.executable, "-c", FRESH_REPLAY, str(bundle), str(key)],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


@pytest.mark.parametrize("driver", ["psycopg", "asyncpg"])
def test_a_warm_sqlalchemy_pool_replays_in_a_fresh_process(  # type: ignore[no-untyped-def]
    captured, pg: Cluster, tmp_path: Path, monkeypatch, driver: str
) -> None:
    import importlib
    import sys

    module = f"warm_{driver}_app"
    app_dir = tmp_path / "app"
    app_dir.mkdir()
    (app_dir / f"{module}.py").write_text(WARM_APP.replace("DRIVER", driver))
    monkeypatch.setenv("DATABASE_URL", f"postgresql+{driver}://postgres:hunter2@127.0.0.1:{pg.port}/postgres")
    monkeypatch.syspath_prepend(str(app_dir))
    app = importlib.import_module(module)
    try:
        with pytest.raises(RuntimeError) as raised:
            if driver == "asyncpg":

                async def scenario() -> None:
                    try:
                        await app.warm()  # the pool connects (and SQLAlchemy initialises its dialect) here
                        await app.order("written by the request")
                    finally:
                        await app.engine.dispose()

                asyncio.run(scenario())
            else:
                app.warm()
                app.order("written by the request")
    finally:
        if driver != "asyncpg":
            app.engine.dispose()
        sys.modules.pop(module, None)
    before = pg_writes(pg.dsn)
    found = replay_in_a_fresh_process(captured.files()[-1], captured.keys.replay, app_dir)
    assert found["outcome"] == "reproduced", found["summary"]
    assert found["message"] == str(raised.value)
    assert found["unconsumed"] == []
    assert pg_writes(pg.dsn) == before


# a connection opened before the capture and the replay (at import, as apps keep one), on the real file
OPENED_EARLY: dict[str, sqlite3.Connection] = {}


@fluxrun.capture
def stamp_blob() -> None:
    conn = OPENED_EARLY["conn"]
    with conn.blobopen("orders", "note", 1) as blob:  # written in place: no statement FluxRun could answer
        blob.write(b"STAMPED")
    conn.commit()
    raise RuntimeError("stamped, then failed")


@fluxrun.capture
def back_up() -> None:
    conn = OPENED_EARLY["conn"]
    with sqlite3.connect(str(STATE["backup"])) as target:
        conn.backup(target)
    raise RuntimeError("backed up, then failed")


@pytest.mark.parametrize(("function", "call"), [(stamp_blob, "blobopen"), (back_up, "backup")])
def test_a_sqlite_call_that_is_not_recorded_is_refused_at_replay_and_writes_nothing(
    captured, sqlite_db: str, tmp_path: Path, function, call
) -> None:
    with sqlite3.connect(sqlite_db) as conn:
        conn.execute("INSERT INTO orders (note) VALUES ('unstamped')")
    STATE["backup"] = str(tmp_path / "backup.db")
    fluxrun.shutdown()  # reopened below with FluxRun installed: the app's connection, opened at import
    fluxrun.init(directory=captured.directory, capture_key=captured.keys.capture)
    OPENED_EARLY["conn"] = sqlite3.connect(sqlite_db)
    try:
        with pytest.raises(RuntimeError, match="then failed"):
            function()
        (path,) = captured.files()
        (note,) = captured.events("unrecorded")  # the bundle says up front that it is not replay-ready
        assert note["call"].startswith(f"sqlite3 {call} ")
        with sqlite3.connect(sqlite_db) as conn:
            conn.execute("UPDATE orders SET note = 'unstamped'")
        Path(STATE["backup"]).unlink(missing_ok=True)
        before = Path(sqlite_db).read_bytes()
        with pytest.raises(fluxrun.LiveIOBlocked, match=f"replay blocked a sqlite3 {call} .*not recorded"):
            fluxrun.replay.run(path, captured.keys.replay, app=function, isolate=False)
        assert Path(sqlite_db).read_bytes() == before
        assert not Path(STATE["backup"]).exists()
    finally:
        OPENED_EARLY.pop("conn").close()


@fluxrun.capture
def psycopg_copy_orders() -> None:
    import psycopg

    with psycopg.connect(str(STATE["dsn"])) as conn, conn.cursor() as cur:
        with cur.copy("COPY orders (note) FROM STDIN") as copy:  # not recorded: COPY is not intercepted
            copy.write_row((STATE["note"],))
        total = cur.execute("SELECT count(*) FROM orders").fetchone()
    raise RuntimeError(f"copied, now {total[0]}")


@pytest.mark.parametrize("isolate", ["1", "0"], ids=["isolated", "in-process"])
def test_a_refusal_inside_a_connection_block_is_what_the_replay_reports(  # type: ignore[no-untyped-def]
    captured, pg: Cluster, monkeypatch, isolate
) -> None:
    """The block's exit rolls back, a call the recording lacks: the refusal came first, and is the cause."""
    monkeypatch.setenv("FLUXRUN_REPLAY_ISOLATE", isolate)
    with pytest.raises(RuntimeError, match="copied"):
        psycopg_copy_orders()
    before = pg_writes(pg.dsn)
    with pytest.raises(fluxrun.LiveIOBlocked, match="COPY"):
        replay(captured, psycopg_copy_orders)
    assert pg_writes(pg.dsn) == before


@fluxrun.capture
def psycopg_pipelined_orders() -> None:
    import psycopg

    with psycopg.connect(str(STATE["dsn"])) as conn, conn.pipeline():  # results come at the sync: not recorded
        conn.execute("INSERT INTO orders (note) VALUES (%s)", (STATE["note"],))
    raise RuntimeError("pipelined")


@fluxrun.capture
async def asyncpg_copy_orders() -> None:
    import asyncpg

    conn = await asyncpg.connect(str(STATE["dsn_url"]))
    try:
        await conn.copy_records_to_table("orders", records=[(STATE["note"],)], columns=["note"])
        total = await conn.fetchval("SELECT count(*) FROM orders")
    finally:
        await conn.close()
    raise RuntimeError(f"copied, now {total}")


@pytest.mark.parametrize(
    ("function", "noted", "refused"),
    [
        (psycopg_copy_orders, "psycopg COPY", "replay blocked a psycopg COPY"),
        (psycopg_pipelined_orders, "psycopg pipeline", "replay blocked a psycopg pipeline"),
        (asyncpg_copy_orders, "asyncpg copy_records_to_table", "replay blocked an asyncpg copy_records_to_table call"),
    ],
    ids=["psycopg-copy", "psycopg-pipeline", "asyncpg-copy"],
)
def test_what_a_driver_does_not_record_is_noted_at_capture_and_refused_by_name(  # type: ignore[no-untyped-def]
    captured, pg: Cluster, function, noted, refused
) -> None:
    with pytest.raises(RuntimeError):
        outcome = function()
        if asyncio.iscoroutine(outcome):
            asyncio.run(outcome)
    (note,) = captured.events("unrecorded")
    assert note["call"].startswith(noted)
    assert note["site"].startswith(f"{__name__}:{function.__name__}:")  # the app's line, not the driver's
    before = pg_writes(pg.dsn)
    with pytest.raises(fluxrun.LiveIOBlocked, match=refused):
        replay(captured, function)
    assert pg_writes(pg.dsn) == before


@fluxrun.capture
def psycopg_result_sets() -> None:
    import psycopg

    with psycopg.connect(str(STATE["dsn"])) as conn, conn.cursor() as cur:
        notes = [(f"{STATE['note']} {n}",) for n in range(3)]
        cur.executemany("INSERT INTO orders (note) VALUES (%s) RETURNING note", notes, returning=True)
        returned = [cur.fetchone()]
        while cur.nextset():  # one result set per row inserted
            returned.append(cur.fetchone())
        cur.execute("SELECT 1 AS one; SELECT 2 AS two, 3 AS three")  # two statements, two result sets
        sets = [(cur.description[0].name, cur.fetchall())]
        cur.nextset()
        sets.append((cur.description[0].name, cur.fetchall()))
        assert cur.nextset() is None
    raise RuntimeError(f"returned {returned}, sets {sets}")


@fluxrun.capture
async def psycopg_async_result_sets() -> None:
    import psycopg

    async with await psycopg.AsyncConnection.connect(str(STATE["dsn"])) as conn, conn.cursor() as cur:
        notes = [(f"{STATE['note']} {n}",) for n in range(3)]
        await cur.executemany("INSERT INTO orders (note) VALUES (%s) RETURNING note", notes, returning=True)
        returned = [await cur.fetchone()]
        while cur.nextset():
            returned.append(await cur.fetchone())
    raise RuntimeError(f"returned {returned}")


@pytest.mark.parametrize("function", [psycopg_result_sets, psycopg_async_result_sets], ids=["sync", "async"])
def test_every_result_set_of_a_statement_replays(captured, pg: Cluster, function) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(RuntimeError) as raised:
        outcome = function()
        if asyncio.iscoroutine(outcome):
            asyncio.run(outcome)
    assert "written by the request 2" in str(raised.value)
    before = pg_writes(pg.dsn)
    result = replay(captured, function)
    assert result.outcome == "reproduced", result.summary()
    assert result.new.message == str(raised.value)
    assert pg_writes(pg.dsn) == before


@pytest.mark.parametrize(
    ("warm", "replayed_in"),
    [(True, "a fresh process"), (True, "this process, its pool warm"), (False, "a fresh process")],
    ids=["warm-fresh", "warm-warm", "cold-fresh"],
)
def test_a_sqlalchemy_pool_on_sqlite_replays(  # type: ignore[no-untyped-def]
    captured, sqlite_db: str, tmp_path: Path, monkeypatch, warm: bool, replayed_in: str
) -> None:
    """Warm: the failing request is not the app's first, its pool connected (and SQLAlchemy set the connection
    up) before the capture. Cold: it connects and sets up inside the failing request. A fresh process connects
    at replay; a warm one reuses its connection."""
    import importlib
    import sys

    app_dir = tmp_path / "app"
    app_dir.mkdir()
    source = WARM_APP.replace('"postgresql+DRIVER://app@db.internal/app"', '"sqlite:////nonexistent/app.db"')
    (app_dir / "warm_sqlite_app.py").write_text(source)
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{sqlite_db}")
    monkeypatch.syspath_prepend(str(app_dir))
    app = importlib.import_module("warm_sqlite_app")
    try:
        if warm:
            app.warm()
        with pytest.raises(RuntimeError) as raised:
            app.order("written by the request")
        before = sqlite_writes(sqlite_db)
        if replayed_in == "a fresh process":
            found = replay_in_a_fresh_process(captured.files()[-1], captured.keys.replay, app_dir)
            assert found["outcome"] == "reproduced", found["summary"]
            assert (found["message"], found["unconsumed"]) == (str(raised.value), [])
        else:
            result = replay(captured, app.order)
            assert result.outcome == "reproduced", result.summary()
            assert (result.new.message, result.unconsumed) == (str(raised.value), [])
        assert sqlite_writes(sqlite_db) == before
    finally:
        app.engine.dispose()
        sys.modules.pop("warm_sqlite_app", None)


@fluxrun.capture
def sqlalchemy_missing_order() -> None:
    from sqlalchemy import create_engine, select
    from sqlalchemy.orm import Session

    engine = create_engine(f"sqlite:///{STATE['sqlite']}")
    try:
        with Session(engine) as session:
            session.execute(select(Order.id).where(Order.note == "never written")).scalar_one()  # raises NoResultFound
    finally:
        engine.dispose()


def test_an_error_raised_in_compiled_library_code_reproduces_from_the_apps_line(captured, sqlite_db: str) -> None:
    """SQLAlchemy 2.1 raises NoResultFound from compiled code whose frames name their source by a relative path
    (lib/sqlalchemy/engine/_result_cy.py): still the library's, so the failure is placed at the app's line."""
    from sqlalchemy.exc import NoResultFound

    with pytest.raises(NoResultFound):
        sqlalchemy_missing_order()
    result = replay(captured, sqlalchemy_missing_order)
    assert result.outcome == "reproduced", result.summary()
    assert "in sqlalchemy_missing_order" in result.new.describe()


DJANGO_APP = """
import os

import django
from django.conf import settings

settings.configure(
    DATABASES={
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": os.environ.get("SHOP_DB", "/nonexistent/shop.db"),
            "CONN_MAX_AGE": 60,  # persistent: set up by an earlier request
        }
    },
    USE_TZ=True,
)
django.setup()

import fluxrun
from django.db import connection


def warm():
    with connection.cursor() as cur:
        cur.execute("SELECT 1")


@fluxrun.capture
def order(note):
    with connection.cursor() as cur:
        cur.execute("INSERT INTO orders (note) VALUES (%s)", [note])
        cur.execute("SELECT count(*) FROM orders")
        (count,) = cur.fetchone()
    raise RuntimeError(f"unexpected order among {count}")
"""

DJANGO_CAPTURE = """
import fluxrun

fluxrun.init()
import django_shop

django_shop.warm()  # Django opens its connection and sets it up (its PRAGMAs) before the failing request
try:
    django_shop.order("written by the request")
except RuntimeError as exc:
    print(exc)
fluxrun.shutdown()
"""


def test_a_persistent_django_connection_replays_in_a_fresh_process(keys, sqlite_db: str, tmp_path: Path) -> None:
    """Django sets a connection up in `BaseDatabaseWrapper.connect` (init_connection_state): that setup is kept
    with the connect event, as SQLAlchemy's is, and answers the fresh process's connect at replay."""
    import os
    import subprocess
    import sys

    app_dir = tmp_path / "app"
    app_dir.mkdir()
    (app_dir / "django_shop.py").write_text(DJANGO_APP)
    bundles = tmp_path / "bundles"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLUXRUN_")}
    env.update(
        FLUXRUN_CAPTURE_KEY=str(keys.capture), FLUXRUN_DIR=str(bundles), SHOP_DB=sqlite_db, PYTHONPATH=str(app_dir)
    )
    done = subprocess.run(
        [sys.executable, "-c", DJANGO_CAPTURE], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0 and "unexpected order among 1" in done.stdout, done.stderr[-3000:]
    (bundle,) = bundles.glob("*.fluxrun")
    before = sqlite_writes(sqlite_db)
    found = replay_in_a_fresh_process(bundle, keys.replay, app_dir)
    assert found["outcome"] == "reproduced", found["summary"]
    assert (found["message"], found["unconsumed"]) == ("unexpected order among 1", [])
    assert sqlite_writes(sqlite_db) == before


def replay_in_process_beside_a_listener(bundle: Path, key: Path, app_dir: Path) -> dict[str, object]:
    """`fluxrun.replay.run` in process (FLUXRUN_REPLAY_ISOLATE=0) in a new interpreter whose DATABASE_URL names
    a listening socket, the hardest case: the replay must not even try to connect to it."""
    import json
    import os
    import socket
    import subprocess
    import sys

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        listener.setblocking(False)
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLUXRUN_")}
        env.update(
            DATABASE_URL=f"postgresql://app@127.0.0.1:{listener.getsockname()[1]}/app",
            FLUXRUN_REPLAY_ISOLATE="0",
            PYTHONPATH=os.pathsep.join([str(app_dir), env.get("PYTHONPATH", "")]),
        )
        done = subprocess.run(
            [sys.executable, "-c", FRESH_REPLAY, str(bundle), str(key)],
            env=env, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        with pytest.raises(BlockingIOError):
            listener.accept()  # no connection was attempted
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


POOL_APP = '''
"""An app whose psycopg_pool opens at import and waits for its connections (a pool's own threads open them;
a null pool's are opened in the request)."""
import os

import fluxrun
from psycopg_pool import POOL

pool = POOL(
    os.environ.get("DATABASE_URL", "postgresql://app@db.internal/app"),
    min_size=MIN_SIZE,
    open=True,
    check=POOL.check_connection,  # a statement per getconn, in the request
)
pool.wait()


@fluxrun.capture
def order(note):
    with pool.connection() as conn:
        conn.execute("INSERT INTO orders (note) VALUES (%s)", (note,))
        (count,) = conn.execute("SELECT count(*) FROM orders").fetchone()
    raise RuntimeError(f"unexpected order among {count}")
'''


@pytest.mark.parametrize(("pool", "min_size"), [("ConnectionPool", 2), ("NullConnectionPool", 0)])
def test_a_psycopg_pool_replays_in_a_fresh_process_and_never_connects(  # type: ignore[no-untyped-def]
    captured, pg: Cluster, tmp_path: Path, monkeypatch, pool: str, min_size: int
) -> None:
    """The pool connects in its own threads, outside any execution. Replayed in-process in a fresh interpreter
    whose DATABASE_URL names a listening server (the hardest case): the pool opens and `wait` returns without a
    connection attempt, and the request's connection is answered from the recording."""
    import importlib
    import sys

    app_dir = tmp_path / "app"
    app_dir.mkdir()
    (app_dir / "pool_app.py").write_text(POOL_APP.replace("POOL", pool).replace("MIN_SIZE", str(min_size)))
    monkeypatch.setenv("DATABASE_URL", f"postgresql://postgres:hunter2@127.0.0.1:{pg.port}/postgres")
    monkeypatch.syspath_prepend(str(app_dir))
    app = importlib.import_module("pool_app")
    try:
        with pytest.raises(RuntimeError) as raised:
            app.order("written by the request")
    finally:
        app.pool.close()
        sys.modules.pop("pool_app", None)
    connect = captured.events("db")[0]
    assert connect["data"]["op"] == "connect"
    assert connect["data"]["opened"] == ("before" if min_size else "during")  # a null pool connects in the request
    before = pg_writes(pg.dsn)
    found = replay_in_process_beside_a_listener(captured.files()[-1], captured.keys.replay, app_dir)
    assert found["outcome"] == "reproduced", found["summary"]
    assert (found["message"], found["unconsumed"]) == (str(raised.value), [])
    assert pg_writes(pg.dsn) == before


ASYNCPG_POOL_APP = '''
"""An app on asyncpg's pool, made on first use, with a `setup` per acquire and a `reset` of its own."""
import os

import asyncpg
import fluxrun

URL = os.environ.get("DATABASE_URL", "postgresql://app@db.internal/app")
POOL = {}


async def setup(conn):
    await conn.execute("SET application_name = 'shop'")


async def reset(conn):
    await conn.execute("RESET ALL")


async def pool():
    if "pool" not in POOL:
        POOL["pool"] = await asyncpg.create_pool(URL, min_size=2, setup=setup, reset=reset)
    return POOL["pool"]


@fluxrun.capture
async def order(note):
    async with (await pool()).acquire() as conn:
        await conn.execute("BEGIN")  # left open: the pool rolls it back when it takes the connection back
        await conn.execute("INSERT INTO orders (note) VALUES ($1)", note)
        count = await conn.fetchval("SELECT count(*) FROM orders")
    raise RuntimeError(f"unexpected order among {count}")
'''


def test_an_asyncpg_pool_replays_in_a_fresh_process_and_never_connects(  # type: ignore[no-untyped-def]
    captured, pg: Cluster, tmp_path: Path, monkeypatch
) -> None:
    """asyncpg's pool connects outside the execution; its `setup` runs on acquire and its reset (asyncpg's
    rollback of the transaction left open, then the pool's own `reset`) on release, in the request. Replayed
    in-process in a fresh interpreter whose DATABASE_URL names a listening server: nothing connects."""
    import importlib
    import sys

    app_dir = tmp_path / "app"
    app_dir.mkdir()
    (app_dir / "asyncpg_pool_app.py").write_text(ASYNCPG_POOL_APP)
    monkeypatch.setenv("DATABASE_URL", f"postgresql://postgres:hunter2@127.0.0.1:{pg.port}/postgres")
    monkeypatch.syspath_prepend(str(app_dir))
    app = importlib.import_module("asyncpg_pool_app")

    async def scenario() -> None:
        await app.pool()  # warm: connected before the request
        try:
            await app.order("written by the request")
        finally:
            await app.POOL.pop("pool").close()

    try:
        with pytest.raises(RuntimeError) as raised:
            asyncio.run(scenario())
    finally:
        sys.modules.pop("asyncpg_pool_app", None)
    calls = [e["call"] for e in captured.events("db")]
    assert calls[0].startswith("asyncpg connect") and calls[1] == "asyncpg execute SET application_name = ?"
    assert calls[-2:] == ["asyncpg execute ROLLBACK", "asyncpg execute RESET ALL"]
    before = pg_writes(pg.dsn)
    found = replay_in_process_beside_a_listener(captured.files()[-1], captured.keys.replay, app_dir)
    assert found["outcome"] == "reproduced", found["summary"]
    assert (found["message"], found["unconsumed"]) == (str(raised.value), [])
    assert pg_writes(pg.dsn) == before


DJANGO_POOL_APP = """
import os

import django
from django.conf import settings

settings.configure(
    DATABASES={
        "default": {
            "ENGINE": "django.db.backends.postgresql",
            "HOST": "127.0.0.1",
            "PORT": os.environ.get("SHOP_PG_PORT", "5432"),
            "NAME": "postgres",
            "USER": "postgres",
            "OPTIONS": {"pool": {"min_size": 2}},  # Django 5.1+: connections from a psycopg_pool
        }
    },
    USE_TZ=True,
)
django.setup()

import fluxrun
from django.db import connection


def warm():
    with connection.cursor() as cur:
        cur.execute("SELECT 1")
    connection.close()  # as at a request's end: the connection goes back to the pool


@fluxrun.capture
def order(note):
    with connection.cursor() as cur:
        cur.execute("INSERT INTO orders (note) VALUES (%s)", [note])
        cur.execute("SELECT count(*) FROM orders")
        (count,) = cur.fetchone()
    raise RuntimeError(f"unexpected order among {count}")
"""


def test_a_django_connection_from_its_psycopg_pool_replays_in_a_fresh_process(  # type: ignore[no-untyped-def]
    keys, pg: Cluster, tmp_path: Path
) -> None:
    """Django's `"pool"` option takes each request's connection from a psycopg_pool that its own threads fill,
    and sets it up (`init_connection_state`) inside the request."""
    import os
    import subprocess
    import sys

    app_dir = tmp_path / "app"
    app_dir.mkdir()
    (app_dir / "django_pool_shop.py").write_text(DJANGO_POOL_APP)
    bundles = tmp_path / "bundles"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLUXRUN_")}
    env.update(
        FLUXRUN_CAPTURE_KEY=str(keys.capture),
        FLUXRUN_DIR=str(bundles),
        SHOP_PG_PORT=str(pg.port),
        PYTHONPATH=str(app_dir),
    )
    script = DJANGO_CAPTURE.replace("django_shop", "django_pool_shop")
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0 and "unexpected order among" in done.stdout, done.stderr[-3000:]
    message = done.stdout.strip().splitlines()[-1]
    (bundle,) = bundles.glob("*.fluxrun")
    before = pg_writes(pg.dsn)
    found = replay_in_a_fresh_process(bundle, keys.replay, app_dir)
    assert found["outcome"] == "reproduced", found["summary"]
    assert (found["message"], found["unconsumed"]) == (message, [])
    assert pg_writes(pg.dsn) == before
