"""sqlite3 while FluxRun is installed: the app gets sqlite's own Connection and Cursor types (subclasses), so
outside a capture a statement costs one context-variable read, and inside one everything the app can do with
a cursor (iterate it, use sqlite3.Row, `with conn:`, a cursor made before the capture) is recorded and replayed.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

import fluxrun


def replay(captured, function):  # type: ignore[no-untyped-def]
    return fluxrun.replay.run(captured.files()[-1], captured.keys.replay, app=function)


@pytest.fixture
def shop(tmp_path: Path) -> str:
    path = str(tmp_path / "shop.db")
    with sqlite3.connect(path) as conn:
        conn.executescript(
            """
            CREATE TABLE orders (id INTEGER PRIMARY KEY, note TEXT);
            INSERT INTO orders (note) VALUES ('a'), ('b'), ('c');
            """
        )
    return path


def test_outside_a_capture_the_app_gets_sqlites_own_types(captured, shop: str) -> None:
    conn = sqlite3.connect(shop)
    cur = conn.execute("SELECT note FROM orders ORDER BY id")
    assert isinstance(conn, sqlite3.Connection) and isinstance(cur, sqlite3.Cursor)
    assert [row for row in cur] == [("a",), ("b",), ("c",)]
    assert isinstance(conn.cursor(), sqlite3.Cursor)
    conn.close()


def test_rows_iteration_context_manager_and_an_earlier_cursor_replay(
    captured, shop: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLUXRUN_REPLAY_ISOLATE", "0")
    conn = sqlite3.connect(shop)
    conn.row_factory = sqlite3.Row
    early = conn.cursor()  # made before the capture, used inside it

    @fluxrun.capture
    def job() -> None:
        notes = [row["note"] for row in conn.execute("SELECT note FROM orders ORDER BY id")]
        with conn:
            conn.execute("INSERT INTO orders (note) VALUES (?)", ("d",))
        early.execute("SELECT count(*) AS n FROM orders")
        count = early.fetchone()["n"]
        raise RuntimeError(f"{notes} {count}")

    with pytest.raises(RuntimeError, match=r"\['a', 'b', 'c'\] 4") as raised:
        job()
    events = captured.events("db")
    assert [e["data"]["op"] for e in events] == ["connect", "execute", "execute", "commit", "execute"]
    assert events[0]["data"]["opened"] == "before"  # opened before the capture: a fresh process connects here
    with sqlite3.connect(shop) as check:
        assert check.execute("SELECT count(*) FROM orders").fetchone() == (4,)
    result = replay(captured, job)
    assert result.outcome == "reproduced", result.summary()
    assert result.new.message == str(raised.value)
    with sqlite3.connect(shop) as check:
        assert check.execute("SELECT count(*) FROM orders").fetchone() == (4,)  # nothing written again
    conn.close()


def test_a_converted_value_the_app_changes_after_reading_is_recorded_as_it_was_read(
    captured, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """sqlite3's own values cannot change and are formatted only if the execution is kept; a converter's
    (here a list) can, so a row holding one is recorded when it is read, before the app changes it."""
    monkeypatch.setenv("FLUXRUN_REPLAY_ISOLATE", "0")
    monkeypatch.setitem(sqlite3.converters, "TAGS", lambda raw: raw.decode().split(","))
    path = str(tmp_path / "tags.db")
    with sqlite3.connect(path) as conn:
        conn.executescript(
            "CREATE TABLE items (id INTEGER PRIMARY KEY, tags TAGS); INSERT INTO items (tags) VALUES ('a,b');"
        )

    @fluxrun.capture
    def job() -> None:
        conn = sqlite3.connect(path, detect_types=sqlite3.PARSE_DECLTYPES)
        (tags,) = conn.execute("SELECT tags FROM items").fetchone()
        tags.append("changed")
        (count,) = conn.execute("SELECT count(*) FROM items").fetchone()
        raise RuntimeError(f"{tags} {count}")

    with pytest.raises(RuntimeError, match=r"\['a', 'b', 'changed'\] 1") as raised:
        job()
    result = replay(captured, job)
    assert result.outcome == "reproduced", result.summary()
    assert result.new.message == str(raised.value)


class PercentCursor(sqlite3.Cursor):
    """A cursor factory that rewrites its SQL before sqlite3 sees it, as Django's sqlite backend does (`%s`)."""

    def execute(self, sql, parameters=(), /):  # type: ignore[no-untyped-def, override]
        return super().execute(sql.replace("%s", "?"), parameters)

    def fetchone(self):  # type: ignore[no-untyped-def]
        row = super().fetchone()
        return None if row is None else list(row)  # and shapes its rows


def test_a_cursor_factorys_own_methods_run_idle_captured_and_replayed(
    captured, shop: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLUXRUN_REPLAY_ISOLATE", "0")
    conn = sqlite3.connect(shop)
    assert conn.cursor(factory=PercentCursor).execute("SELECT note FROM orders WHERE id = %s", (2,)).fetchone() == [
        "b"
    ]  # outside a capture: the factory's execute and fetchone, then sqlite3's

    @fluxrun.capture
    def job() -> None:
        cur = conn.cursor(factory=PercentCursor)
        row = cur.execute("SELECT note FROM orders WHERE id = %s", (3,)).fetchone()
        raise RuntimeError(f"row {row}")

    with pytest.raises(RuntimeError, match=r"row \['c'\]") as raised:
        job()
    (event,) = captured.events("db")[1:]  # after the connection's connect event (opened before the capture)
    assert event["data"]["sql"] == "SELECT note FROM orders WHERE id = ?"  # recorded as sqlite3 received it
    result = replay(captured, job)
    assert result.outcome == "reproduced", result.summary()
    assert result.new.message == str(raised.value)
    conn.close()


class Tracked(sqlite3.Connection):
    """A connection factory with a method of its own in front of sqlite3's (a class, as apps write them)."""

    def execute(self, sql, parameters=(), /):  # type: ignore[no-untyped-def, override]
        return super().execute(sql.replace("%s", "?"), parameters)


def test_sqlite3s_own_factory_rules_hold_with_fluxrun_installed(captured, shop: str) -> None:
    """What sqlite3 accepts, FluxRun accepts (CPython's own test_sqlite3 found these): any callable as a factory,
    an explicit `factory=None` refused as sqlite3 refuses it, a connection factory's own methods first."""
    plain = sqlite3.connect(shop, factory=lambda *a, **k: sqlite3.Connection(*a, **k))  # not a class
    assert plain.execute("SELECT count(*) FROM orders").fetchone() == (3,)
    cursor = plain.cursor(factory=lambda conn: sqlite3.Cursor(conn))
    assert cursor.execute("SELECT 1").fetchone() == (1,)
    plain.close()
    conn = sqlite3.connect(shop, factory=Tracked)
    assert isinstance(conn, Tracked)
    assert conn.execute("SELECT note FROM orders WHERE id = %s", (1,)).fetchone() == ("a",)
    with pytest.raises(TypeError):
        conn.cursor(factory=None)
    assert conn.cursor(factory=lambda c: sqlite3.Cursor(c)).execute("SELECT 2").fetchone() == (2,)

    class Rows:  # a sequence with only __len__ and __getitem__: sqlite3 reads indices below len()
        def __len__(self) -> int:
            return 1

        def __getitem__(self, index: int) -> int:
            assert index < 1
            return 2

    @fluxrun.capture
    def job() -> None:
        row = conn.execute("SELECT note FROM orders WHERE id = ?", Rows()).fetchone()
        raise RuntimeError(f"row {row}")

    with pytest.raises(RuntimeError, match=r"row \('b',\)"):
        job()
    conn.close()
