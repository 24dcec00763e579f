"""psycopg2 recorded at the driver level: statements with what they returned, commits and rollbacks, errors.

psycopg2's connection and cursor are C types: `psycopg2.connect` opens the connection with a factory of
FluxRun's whose cursors see the context. The app keeps psycopg2's types and cursor factories
(`RealDictCursor`, `DictCursor`, `NamedTupleCursor`) and reads its rows as it would without FluxRun.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Iterator

import pytest
from postgres import Cluster, cluster_with  # tests/support, on the path from tests/conftest.py

import fluxrun

psycopg2 = pytest.importorskip("psycopg2")
extras = pytest.importorskip("psycopg2.extras")


@pytest.fixture(scope="module")
def postgres() -> Iterator[Cluster]:
    with cluster_with("CREATE TABLE orders (id serial PRIMARY KEY, note text UNIQUE, amount numeric)") as cluster:
        yield cluster


def db_events(captured) -> list[dict]:  # type: ignore[no-untyped-def]
    return captured.events("db")


def test_statements_rows_and_commits_are_recorded_and_the_app_reads_its_rows(captured, postgres: Cluster) -> None:
    @fluxrun.capture
    def job() -> None:
        conn = psycopg2.connect(postgres.dsn)
        cur = conn.cursor()
        cur.execute("INSERT INTO orders (note, amount)\n  VALUES (%s, %s) RETURNING id", ("cap", 12))
        new = cur.fetchone()
        conn.commit()
        cur.execute("SELECT note, amount FROM orders WHERE note = %(note)s", {"note": "cap"})
        rows = cur.fetchall()
        conn.close()
        raise RuntimeError(f"{new[0]} {rows}")

    with pytest.raises(RuntimeError, match=r"1 \[\('cap', Decimal\('12'\)\)\]"):
        job()
    connect, insert, commit, select = db_events(captured)
    assert connect["data"]["driver"] == "psycopg2" and connect["data"]["op"] == "connect"
    assert connect["data"]["server_version"] >= 100000
    assert insert["data"]["sql"] == "INSERT INTO orders (note, amount) VALUES (%s, %s) RETURNING id"
    assert insert["data"]["params"] == ["cap", 12]
    assert insert["data"]["result"]["rows"] == [[1]] and insert["data"]["result"]["rowcount"] == 1
    assert insert["data"]["result"]["status"] == "INSERT 0 1"
    assert commit["data"]["op"] == "commit"
    assert select["data"]["params"] == {"note": "cap"}
    assert select["data"]["result"]["rows"] == [["cap", {"$t": "decimal", "v": "12"}]]
    assert [d[0] for d in select["data"]["result"]["description"]] == ["note", "amount"]
    assert select["site"].startswith(f"{__name__}:")  # the app's line
    assert insert["call"] == "psycopg2 execute INSERT INTO orders (note, amount) VALUES (%s, %s) RETURNING id"


@pytest.mark.parametrize(
    ("factory", "expected"),
    [
        ("RealDictCursor", "[RealDictRow([('note', 'dict'), ('n', 1)])]"),
        ("DictCursor", "[['dict', 1]] dict"),
        ("NamedTupleCursor", "[Record(note='dict', n=1)]"),
    ],
)
def test_cursor_factories_keep_working_and_raw_rows_are_recorded(
    captured, postgres: Cluster, factory: str, expected: str
) -> None:
    cursor_factory = getattr(extras, factory)

    @fluxrun.capture
    def job() -> None:
        with psycopg2.connect(postgres.dsn, cursor_factory=cursor_factory) as conn, conn.cursor() as cur:
            cur.execute("SELECT 'dict' AS note, 1 AS n")
            rows = cur.fetchall()
            extra = f" {rows[0]['note']}" if factory == "DictCursor" else ""
        raise RuntimeError(f"{rows}{extra}")

    with pytest.raises(RuntimeError) as raised:
        job()
    assert str(raised.value) == expected
    select = next(e for e in db_events(captured) if e["data"]["op"] == "execute")
    assert select["data"]["result"]["rows"] == [["dict", 1]]


def test_with_conn_commits_or_rolls_back_as_calls(captured, postgres: Cluster) -> None:
    @fluxrun.capture
    def job() -> None:
        conn = psycopg2.connect(postgres.dsn)
        with conn, conn.cursor() as cur:
            cur.execute("INSERT INTO orders (note) VALUES ('block')")
        try:
            with conn, conn.cursor() as cur:
                cur.execute("INSERT INTO orders (note) VALUES ('undone')")
                raise KeyError("inside")
        except KeyError:
            pass
        conn.close()
        raise RuntimeError("x")

    with pytest.raises(RuntimeError):
        job()
    ops = [e["data"]["op"] for e in db_events(captured)]
    assert ops == ["connect", "execute", "commit", "execute", "rollback"]


def test_a_database_error_is_recorded_with_its_class_and_pgcode(captured, postgres: Cluster) -> None:
    @fluxrun.capture
    def job() -> None:
        with psycopg2.connect(postgres.dsn) as conn, conn.cursor() as cur:
            cur.execute("INSERT INTO orders (note) VALUES ('twice')")
            cur.execute("INSERT INTO orders (note) VALUES ('twice')")

    with pytest.raises(psycopg2.errors.UniqueViolation):
        job()
    failed = next(e for e in db_events(captured) if e.get("error"))
    assert failed["error"]["type"] == "psycopg2.errors:UniqueViolation"
    assert failed["data"]["pgerror"]["pgcode"] == "23505"


def test_a_recorded_error_still_pickles_with_its_pgcode(captured, postgres: Cluster) -> None:
    """Recording the error leaves it as psycopg2 made it: pickled (multiprocessing, Celery results) it keeps its
    `pgcode` and `pgerror`, which psycopg2's `__reduce__` adds only to an exception without a `__dict__`."""

    @fluxrun.capture
    def job() -> bytes:
        conn = psycopg2.connect(postgres.dsn)
        try:
            conn.cursor().execute("SELECT * FROM nonexistent")
        except psycopg2.Error as exc:
            return pickle.dumps(exc)
        raise AssertionError("no error")

    again = pickle.loads(job())
    assert type(again) is psycopg2.errors.UndefinedTable
    assert again.pgcode == "42P01" and "nonexistent" in again.pgerror


def test_a_row_that_fails_to_convert_fails_the_apps_fetch_as_without_fluxrun(captured, postgres: Cluster) -> None:
    """A typecaster raising on one row: the app's fetches see every row and the error where psycopg2 raises it,
    as they do outside a capture (the snapshot's read, which met the error first, leaves the cursor as it was)."""

    def picky(value: str | None, cursor: object) -> int:
        if value == "2":
            raise ValueError("bad row 2")
        return int(value or 0)

    def read_all(conn: object) -> list[object]:
        cur = conn.cursor()  # type: ignore[attr-defined]
        psycopg2.extensions.register_type(psycopg2.extensions.new_type((23,), "PICKY", picky), cur)
        cur.execute("SELECT generate_series(1, 4)::int4")
        seen: list[object] = []
        while True:
            try:
                row = cur.fetchone()
            except ValueError as exc:
                seen.append(str(exc))
                continue
            if row is None:
                return seen
            seen.append(row[0])

    conn = psycopg2.connect(postgres.dsn)
    assert read_all(conn) == [1, "bad row 2", 3, 4]  # outside a capture
    assert fluxrun.capture(read_all)(conn) == [1, "bad row 2", 3, 4]


def test_executemany_is_one_call_with_every_parameter_set(captured, postgres: Cluster) -> None:
    @fluxrun.capture
    def job() -> None:
        with psycopg2.connect(postgres.dsn) as conn, conn.cursor() as cur:
            cur.executemany("INSERT INTO orders (note) VALUES (%s)", (row for row in [("m1",), ("m2",)]))
            count = cur.rowcount
            conn.rollback()
        raise RuntimeError(count)

    with pytest.raises(RuntimeError, match="2"):
        job()
    many = next(e for e in db_events(captured) if e["data"]["op"] == "executemany")
    assert many["data"]["params"] == [["m1"], ["m2"]] and many["data"]["result"]["rowcount"] == 2


def test_passwords_are_never_recorded(captured, postgres: Cluster) -> None:
    secret = "s3cr3t-Pa55"

    @fluxrun.capture
    def job() -> None:
        psycopg2.connect(f"{postgres.dsn} password={secret}").close()
        psycopg2.connect(f"postgresql://postgres:{secret}@127.0.0.1:{postgres.port}/postgres").close()
        psycopg2.connect(host="127.0.0.1", port=postgres.port, user="postgres", password=secret).close()
        raise RuntimeError("x")

    with pytest.raises(RuntimeError):
        job()
    [bundle] = captured.bundles()
    assert secret not in json.dumps(bundle.payload) and secret not in json.dumps(bundle.summary)
    calls = [e["call"] for e in db_events(captured) if e["data"]["op"] == "connect"]
    assert len(calls) == 3 and all("[Filtered]" in c for c in calls)


def copy_in(conn, cur) -> None:  # type: ignore[no-untyped-def]
    import io

    cur.copy_expert("COPY orders (note) FROM STDIN", io.StringIO("copied\n"))


def named_cursor(conn, cur) -> None:  # type: ignore[no-untyped-def]
    with conn.cursor("big_read") as named:
        named.execute("SELECT 1")
        named.fetchall()


def listen(conn, cur) -> None:  # type: ignore[no-untyped-def]
    cur.execute("LISTEN orders_channel")


def large_object(conn, cur) -> None:  # type: ignore[no-untyped-def]
    conn.lobject(0, "wb").close()


@pytest.mark.parametrize(
    ("use", "note"),
    [
        (copy_in, "psycopg2 copy_expert COPY orders (note) FROM STDIN"),
        (named_cursor, "psycopg2 named cursor big_read"),
        (listen, "psycopg2 LISTEN orders_channel"),
        (large_object, "psycopg2 lobject a large object"),
    ],
)
def test_what_is_not_recorded_is_noted(captured, postgres: Cluster, use, note) -> None:  # type: ignore[no-untyped-def]
    @fluxrun.capture
    def job() -> None:
        with psycopg2.connect(postgres.dsn) as conn, conn.cursor() as cur:
            use(conn, cur)
            conn.rollback()
        raise RuntimeError("x")

    with pytest.raises(RuntimeError):
        job()
    (noted,) = captured.events("unrecorded")
    assert noted["call"] == note


def test_callproc_is_recorded(captured, postgres: Cluster) -> None:
    @fluxrun.capture
    def job() -> None:
        with psycopg2.connect(postgres.dsn) as conn, conn.cursor() as cur:
            cur.callproc("lower", ("ABC",))
            row = cur.fetchone()
        raise RuntimeError(row)

    with pytest.raises(RuntimeError, match="abc"):
        job()
    call = next(e for e in db_events(captured) if e["data"]["op"] == "callproc")
    assert call["data"]["sql"] == "lower" and call["data"]["params"] == ["ABC"]
    assert call["data"]["result"]["rows"] == [["abc"]]


def test_outside_a_capture_psycopg2_is_untouched(postgres: Cluster, captured) -> None:
    with psycopg2.connect(postgres.dsn) as conn:
        with conn.cursor(cursor_factory=extras.RealDictCursor) as cur:
            cur.execute("SELECT 1 AS one")
            assert cur.fetchone() == {"one": 1}
        with conn.cursor() as cur:
            cur.execute("SELECT %s::int", (2,))
            assert cur.fetchone() == (2,) and isinstance(cur, psycopg2.extensions.cursor)
        conn.rollback()
    assert isinstance(conn, psycopg2.extensions.connection)


def test_sqlalchemy_orm_over_psycopg2_is_recorded_with_no_declaration(captured, postgres: Cluster) -> None:
    from sqlalchemy import create_engine, text
    from sqlalchemy.orm import Session

    engine = create_engine(f"postgresql+psycopg2://postgres@127.0.0.1:{postgres.port}/postgres")

    @fluxrun.capture
    def job() -> None:
        with Session(engine) as session:
            session.execute(text("INSERT INTO orders (note) VALUES (:note)"), {"note": "orm2"})
            session.commit()
        raise RuntimeError("x")

    with pytest.raises(RuntimeError):
        job()
    engine.dispose()
    events = db_events(captured)
    assert {e["data"]["driver"] for e in events} == {"psycopg2"}
    assert any((e["data"].get("sql") or "").startswith("INSERT INTO orders") for e in events)
    assert "commit" in [e["data"]["op"] for e in events]
