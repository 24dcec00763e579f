"""Replay answers psycopg2's calls from the tape: `psycopg2.connect` never connects, no statement is sent.

Each scenario writes and fails for real, then is replayed through `fluxrun.replay.run`, in-process and in the
isolated child, with the server up (a trigger counts every write: none at replay) and with it stopped.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from postgres import Cluster, cluster_with  # tests/support, on the path from tests/conftest.py
from sqlalchemy import String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

import fluxrun
from fluxrun.errors import ReplayDivergence

psycopg2 = pytest.importorskip("psycopg2")

PG_SCHEMA = """
CREATE TABLE orders (id serial PRIMARY KEY, note text UNIQUE);
CREATE TABLE kinds (id serial PRIMARY KEY, b bytea, n numeric, t timestamptz, u uuid, a int[], j jsonb);
CREATE TABLE writes (n bigint NOT NULL);
INSERT INTO writes VALUES (0);
CREATE FUNCTION count_write() RETURNS trigger AS $$ BEGIN UPDATE writes SET n = n + 1; RETURN NULL; END $$
    LANGUAGE plpgsql;
CREATE TRIGGER orders_writes AFTER INSERT OR UPDATE OR DELETE ON orders FOR EACH ROW EXECUTE FUNCTION count_write();
CREATE TRIGGER kinds_writes AFTER INSERT OR UPDATE OR DELETE ON kinds FOR EACH ROW EXECUTE FUNCTION count_write();
"""

STATE: dict[str, object] = {"dsn": "", "note": "written by the request"}


@pytest.fixture(scope="module")
def postgres() -> Iterator[Cluster]:
    with cluster_with(PG_SCHEMA) as cluster:
        yield cluster


@pytest.fixture(autouse=True)
def in_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLUXRUN_REPLAY_ISOLATE", "0")
    STATE["note"] = "written by the request"


@pytest.fixture
def pg(postgres: Cluster) -> Cluster:
    STATE["dsn"] = f"{postgres.dsn} password=hunter2"
    STATE["sa_url"] = f"postgresql+psycopg2://postgres:hunter2@127.0.0.1:{postgres.port}/postgres"
    with psycopg2.connect(postgres.dsn) as conn, conn.cursor() as cur:
        cur.execute("DELETE FROM orders")  # each scenario starts from an empty table (a write, before capture)
    conn.close()
    return postgres


def pg_writes(dsn: str) -> tuple[int, int]:
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT n FROM writes")
        writes = cur.fetchone()[0]
        cur.execute("SELECT count(*) FROM orders")
        rows = cur.fetchone()[0]
    conn.close()
    return int(writes), int(rows)


def replay(captured, function, **options):  # type: ignore[no-untyped-def]
    path = captured.files()[-1]
    return fluxrun.replay.run(path, captured.keys.replay, app=function, **options)


# -- the captured functions ----------------------------------------------------------------------------------
@fluxrun.capture
def plain_order() -> None:
    conn = psycopg2.connect(str(STATE["dsn"]))
    cur = conn.cursor()
    cur.execute("INSERT INTO orders (note) VALUES (%s) RETURNING id, note", (STATE["note"],))
    new = cur.fetchone()
    conn.commit()
    cur.execute("SELECT id, note FROM orders ORDER BY id")
    described = [(d.name, d.type_code) for d in cur.description]
    rows = [cur.fetchone(), cur.fetchmany(1), cur.fetchall(), cur.rowcount, cur.statusmessage, cur.rownumber]
    cur.execute("SELECT i FROM generate_series(1, 4) AS i")
    iterated = [*cur]
    cur.scroll(1, "absolute")
    iterated.append(cur.fetchall())
    returned = cur.callproc("upper", (STATE["note"],))
    iterated += [returned, cur.fetchone(), cur.description[0].name]
    conn.close()
    raise RuntimeError(f"unexpected order {new}: {described} {rows} {iterated}")


@fluxrun.capture
def dict_cursors() -> None:
    from psycopg2.extras import DictCursor, NamedTupleCursor, RealDictCursor

    conn = psycopg2.connect(str(STATE["dsn"]), cursor_factory=RealDictCursor)
    read: list[object] = []
    with conn:
        with conn.cursor() as cur:
            cur.execute("INSERT INTO orders (note) VALUES (%s) RETURNING id, note", (STATE["note"],))
            read.append(cur.fetchone())
        sql = "SELECT i, i * 2 AS twice FROM generate_series(1, 5) AS i"
        for factory in (DictCursor, NamedTupleCursor, RealDictCursor):
            with conn.cursor(cursor_factory=factory) as cur:
                cur.execute(sql)
                read += [cur.fetchone(), cur.fetchmany(2), [*cur], type(cur).__name__]
                cur.execute(sql)
                rows = cur.fetchall()
                read += [rows, rows[0]["twice"] if factory is not NamedTupleCursor else rows[0].twice]
    conn.close()
    raise RuntimeError(repr(read))


KINDS_SQL = "INSERT INTO kinds (b, n, t, u, a, j) VALUES (%s, %s, %s, %s, %s, %s) RETURNING b, n, t, u, a, j"


@fluxrun.capture
def kinds() -> None:
    import datetime as dt
    import decimal
    import uuid

    from psycopg2.extras import Json, register_uuid

    register_uuid()
    values = (
        b"\x00\xffbin",
        decimal.Decimal("12345678901234567890.000000001"),
        dt.datetime(2024, 2, 29, 23, 59, 59, 123456, tzinfo=dt.timezone(dt.timedelta(hours=5, minutes=30))),
        uuid.UUID("12345678-1234-5678-1234-567812345678"),
        [1, None, 3],
        Json({"a": [1, 2.5, None, True], "b": {"c": "é"}}),
    )
    with psycopg2.connect(str(STATE["dsn"])) as conn, conn.cursor() as cur:
        cur.execute(KINDS_SQL, values)
        row = cur.fetchone()
    conn.close()
    raise RuntimeError(repr([(type(v).__name__, bytes(v) if isinstance(v, memoryview) else v) for v in row]))


@fluxrun.capture
def duplicate_order() -> None:
    conn = psycopg2.connect(str(STATE["dsn"]))
    try:
        with conn, conn.cursor() as cur:
            cur.executemany("INSERT INTO orders (note) VALUES (%s)", [("first",), ("second",)])
            cur.execute("INSERT INTO orders (note) VALUES (%s)", ("first",))
    except psycopg2.errors.UniqueViolation as exc:
        caught = f"{type(exc).__name__} {exc.pgcode} {isinstance(exc, psycopg2.IntegrityError)}"
    finally:
        conn.close()
    raise RuntimeError(f"the order was refused: {caught}")


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
        session.add_all([Order(note="bulk 1"), Order(note="bulk 2")])
        session.commit()
        notes = session.scalars(select(Order.note).order_by(Order.id)).all()
    engine.dispose()
    raise RuntimeError(f"unexpected order among {len(notes)}: {notes}")


@fluxrun.capture
def copied_orders() -> None:
    import io

    with psycopg2.connect(str(STATE["dsn"])) as conn, conn.cursor() as cur:
        cur.copy_from(io.StringIO(f"{STATE['note']}\n"), "orders", columns=("note",))
        cur.execute("SELECT count(*) FROM orders")
        total = cur.fetchone()
    conn.close()
    raise RuntimeError(f"copied, now {total[0]}")


SCENARIOS = [plain_order, dict_cursors, kinds, duplicate_order, sqlalchemy_orm_order]
IDS = ["plain", "dict-cursors", "kinds", "error-and-executemany", "sqlalchemy-orm"]


@pytest.mark.parametrize("function", SCENARIOS, ids=IDS)
def test_replay_reproduces_and_writes_nothing(captured, pg: Cluster, function) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(RuntimeError) as raised:
        function()
    before = pg_writes(pg.dsn)
    assert before[0] > 0
    result = replay(captured, function)
    assert result.outcome == "reproduced", result.summary()
    assert result.new.message == str(raised.value)
    assert result.served["db"] >= 3 and result.unconsumed == []
    assert pg_writes(pg.dsn) == before  # the database is up and reachable: still not one write


def test_replay_in_the_isolated_child_reproduces(captured, pg: Cluster, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("FLUXRUN_REPLAY_ISOLATE", "1")
    with pytest.raises(RuntimeError) as raised:
        duplicate_order()
    before = pg_writes(pg.dsn)
    result = replay(captured, duplicate_order)
    assert result.outcome == "reproduced", result.summary()
    assert result.new.message == str(raised.value)
    assert pg_writes(pg.dsn) == before


def test_the_recorded_error_comes_back_as_its_class_with_its_pgcode(captured, pg: Cluster) -> None:
    with pytest.raises(RuntimeError, match="UniqueViolation 23505 True"):
        duplicate_order()
    result = replay(captured, duplicate_order)
    assert result.outcome == "reproduced", result.summary()
    assert "UniqueViolation 23505 True" in result.new.message


def test_a_changed_statement_diverges_showing_both(captured, pg: Cluster) -> None:
    with pytest.raises(RuntimeError):
        plain_order()
    STATE["note"] = "a different note"
    with pytest.raises(ReplayDivergence) as diverged:
        replay(captured, plain_order)
    message = str(diverged.value)
    assert "written by the request" in message and "a different note" in message


@fluxrun.capture
def streamed_orders() -> None:
    with psycopg2.connect(str(STATE["dsn"])) as conn:
        conn.cursor().execute("INSERT INTO orders (note) VALUES (%s)", (STATE["note"],))
        with conn.cursor("all_orders") as named:  # a server-side cursor: not recorded
            named.execute("SELECT note FROM orders")
            notes = named.fetchall()
    conn.close()
    raise RuntimeError(f"streamed {notes}")


@pytest.mark.parametrize("isolate", ["1", "0"], ids=["isolated", "in-process"])
@pytest.mark.parametrize(("function", "what"), [(copied_orders, "copy_from"), (streamed_orders, "named cursor")])
def test_what_is_not_recorded_is_refused_by_name_at_replay_and_writes_nothing(  # type: ignore[no-untyped-def]
    captured, pg: Cluster, monkeypatch, isolate, function, what
) -> None:
    monkeypatch.setenv("FLUXRUN_REPLAY_ISOLATE", isolate)
    with pytest.raises(RuntimeError, match=r"copied|streamed"):
        function()
    assert captured.events("unrecorded")
    before = pg_writes(pg.dsn)
    with pytest.raises(fluxrun.LiveIOBlocked, match=f"replay blocked a psycopg2 {what}"):
        replay(captured, function)
    assert pg_writes(pg.dsn) == before


@pytest.mark.parametrize("function", SCENARIOS, ids=IDS)
def test_replay_with_postgres_stopped_still_reproduces(captured, tmp_path: Path, function) -> None:  # type: ignore[no-untyped-def]
    with cluster_with(PG_SCHEMA) as cluster:
        STATE["dsn"] = f"{cluster.dsn} password=hunter2"
        STATE["sa_url"] = f"postgresql+psycopg2://postgres:hunter2@127.0.0.1:{cluster.port}/postgres"
        with pytest.raises(RuntimeError) as raised:
            function()
    # the cluster is stopped and its folder removed: nothing listens on its port
    for isolate in (False, True):
        result = replay(captured, function, isolate=isolate)
        assert result.outcome == "reproduced", result.summary()
        assert result.new.message == str(raised.value)


# -- a warm SQLAlchemy pool on psycopg2, replayed in a fresh process -------------------------------------------
WARM_APP = '''
"""An app whose SQLAlchemy engine is created at import and connected before the failing request."""
import os

import fluxrun
from sqlalchemy import String, create_engine, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

engine = create_engine(os.environ.get("DATABASE_URL", "postgresql+psycopg2://app@db.internal/app"))


class Base(DeclarativeBase):
    pass


class Order(Base):
    __tablename__ = "orders"
    id: Mapped[int] = mapped_column(primary_key=True)
    note: Mapped[str] = mapped_column(String)


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


def test_a_warm_sqlalchemy_pool_replays_in_a_fresh_process(captured, pg: Cluster, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import importlib
    import json
    import os
    import subprocess

    app_dir = tmp_path / "app"
    app_dir.mkdir()
    (app_dir / "warm_psycopg2_app.py").write_text(WARM_APP)
    monkeypatch.setenv("DATABASE_URL", str(STATE["sa_url"]))
    monkeypatch.syspath_prepend(str(app_dir))
    app = importlib.import_module("warm_psycopg2_app")
    try:
        with pytest.raises(RuntimeError) as raised:
            app.warm()  # the pool connects (and SQLAlchemy initialises its dialect) here, outside the capture
            app.order("written by the request")
    finally:
        app.engine.dispose()
        sys.modules.pop("warm_psycopg2_app", None)
    connect = captured.events("db")[0]
    assert connect["data"]["opened"] == "before" and connect["data"]["setup"]
    before = pg_writes(pg.dsn)
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "FLUXRUN_REPLAY_ISOLATE")}
    env["PYTHONPATH"] = os.pathsep.join([str(app_dir), env.get("PYTHONPATH", "")])
    done = subprocess.run(
        [sys.executable, "-c", FRESH_REPLAY, str(captured.files()[-1]), str(captured.keys.replay)],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["outcome"] == "reproduced", found["summary"]
    assert found["message"] == str(raised.value)
    assert found["unconsumed"] == []
    assert pg_writes(pg.dsn) == before


# -- Django on psycopg2: a persistent connection set up by an earlier request, replayed in a fresh process ------
DJANGO_APP = """
import os
import sys

sys.modules["psycopg"] = None  # Django prefers psycopg 3 when it is installed: this app runs on psycopg2

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
            "PASSWORD": os.environ.get("SHOP_PG_PASSWORD", ""),
            "CONN_MAX_AGE": 60,  # persistent: set up by an earlier request
        }
    },
    USE_TZ=True,
)
django.setup()

import fluxrun
import psycopg2
from django.db import connection, transaction


def warm():
    with connection.cursor() as cur:
        cur.execute("SELECT 1")


@fluxrun.capture
def order(note):
    with transaction.atomic(), connection.cursor() as cur:
        cur.execute("INSERT INTO orders (note) VALUES (%s) RETURNING id", [note])
        (new,) = cur.fetchone()
        cur.execute("SELECT count(*), now() > '2000-01-01'::timestamptz FROM orders")
        count, recent = cur.fetchone()
    on_psycopg2 = isinstance(connection.connection, psycopg2.extensions.connection)
    raise RuntimeError(f"unexpected order {new} on psycopg2={on_psycopg2} among {count} {recent}")
"""

DJANGO_CAPTURE = """
import fluxrun

fluxrun.init()
import django_psycopg2_shop

django_psycopg2_shop.warm()  # Django opens its connection and sets it up before the failing request
try:
    django_psycopg2_shop.order("written by the request")
except RuntimeError as exc:
    print(exc)
fluxrun.shutdown()
"""


def test_a_persistent_django_connection_on_psycopg2_replays_in_a_fresh_process(
    keys, pg: Cluster, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    import json
    import os
    import subprocess

    app_dir = tmp_path / "app"
    app_dir.mkdir()
    (app_dir / "django_psycopg2_shop.py").write_text(DJANGO_APP)
    bundles = tmp_path / "bundles"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLUXRUN_")}
    env.update(
        FLUXRUN_CAPTURE_KEY=str(keys.capture),
        FLUXRUN_DIR=str(bundles),
        SHOP_PG_PORT=str(pg.port),
        SHOP_PG_PASSWORD="hunter2",
        PYTHONPATH=str(app_dir),
    )
    done = subprocess.run(
        [sys.executable, "-c", DJANGO_CAPTURE], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0 and "on psycopg2=True among 1 True" in done.stdout, done.stdout + done.stderr[-3000:]
    message = done.stdout.strip().splitlines()[-1]
    (bundle,) = bundles.glob("*.fluxrun")
    before = pg_writes(pg.dsn)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLUXRUN_", "SHOP_"))}
    env["PYTHONPATH"] = str(app_dir)
    replayed = subprocess.run(
        [sys.executable, "-c", FRESH_REPLAY, str(bundle), str(keys.replay)],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert replayed.returncode == 0, replayed.stderr[-3000:]
    found = json.loads(replayed.stdout.strip().splitlines()[-1])
    assert found["outcome"] == "reproduced", found["summary"]
    assert (found["message"], found["unconsumed"]) == (message, [])
    assert pg_writes(pg.dsn) == before
    assert b"hunter2" not in bundle.read_bytes()
