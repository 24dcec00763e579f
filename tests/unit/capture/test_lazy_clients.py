"""FluxRun never imports a client library the app does not use; one the app imports after `fluxrun.init()`
is intercepted from that moment (checked in a fresh interpreter, where nothing else imported them)."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_init_imports_no_client_library_and_a_later_import_is_intercepted(keys, tmp_path) -> None:
    script = textwrap.dedent(
        f"""
        import sys
        import fluxrun
        fluxrun.init(directory={str(tmp_path)!r}, capture_key={str(keys.capture)!r})
        clients = ("psycopg", "asyncpg", "sqlalchemy", "aiohttp", "redis", "requests", "urllib3", "aiosmtplib")
        print(sorted(m for m in clients if m in sys.modules))
        import redis
        print(hasattr(vars(redis.Redis)["execute_command"], "__wrapped__"))  # a replacement wraps the original
        fluxrun.shutdown()
        print(hasattr(vars(redis.Redis)["execute_command"], "__wrapped__"))
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    imported, patched, restored = done.stdout.split()
    assert imported == "[]", done.stdout
    assert patched == "True" and restored == "False", done.stdout


def test_sqlalchemy_imported_after_init_records_how_its_pool_set_a_connection_up(keys, tmp_path) -> None:
    """SQLAlchemy's pool connect is the seam that keeps a connection's setup with its connect event: it must be
    in place when SQLAlchemy comes after `fluxrun.init()` (sqlite3, imported long before, once carried it)."""
    script = textwrap.dedent(
        f"""
        import json, sys
        import fluxrun
        fluxrun.init(directory={str(tmp_path / "bundles")!r}, capture_key={str(keys.capture)!r})
        from sqlalchemy import create_engine, text
        engine = create_engine("sqlite:///{tmp_path / "shop.db"}")
        with engine.connect() as conn:  # a warm pool: connected and set up before the request
            conn.execute(text("SELECT 1"))

        @fluxrun.capture
        def request():
            with engine.connect() as conn:
                conn.execute(text("SELECT 2"))
            raise RuntimeError("failed")

        try:
            request()
        except RuntimeError:
            pass
        fluxrun.shutdown()
        """
    )
    subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    from fluxrun.bundle import open_bundle

    (bundle,) = (tmp_path / "bundles").glob("*.fluxrun")
    events = open_bundle(bundle.read_bytes(), keys.replay_key).payload["events"]
    connect = next(e["data"] for e in events if e["kind"] == "db" and e["data"]["op"] == "connect")
    assert connect["opened"] == "before" and connect["setup"], connect  # the dialect's setup, kept
