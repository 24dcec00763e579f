"""Engine creation and schema migrations (Alembic, run at start-up) for SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import orjson
from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, event
from sqlmodel import create_engine

__all__ = ["make_engine", "migrate"]

ALEMBIC_DIR = Path(__file__).resolve().parent.parent / "alembic"
CONNECT_TIMEOUT_S = 5


def _json_dumps(value: object) -> str:
    """JSON columns (execution summaries above all) through orjson: ~10x faster than json.dumps."""
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        if url.startswith("sqlite:///"):
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": 30},
            hide_parameters=True,  # error texts reach logs and /healthz: never another tenant's values
            json_serializer=_json_dumps,
            json_deserializer=orjson.loads,
        )

        @event.listens_for(engine, "connect")
        def _pragmas(connection, _record):  # type: ignore[no-untyped-def]
            cursor = connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")  # readers do not block the aggregator's writes
            # FULL: every commit is fsynced before it returns. The aggregator checkpoints the ingest WAL (and
            # so lets it delete acknowledged records) right after its index commit; with NORMAL that commit
            # was durable only at SQLite's next checkpoint, and a power cut in between lost acknowledged
            # bundles (tests/server/test_durability.py). One fdatasync per aggregator batch, not per bundle.
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        return engine
    return create_engine(
        url,
        pool_pre_ping=True,
        pool_size=10,
        hide_parameters=True,
        # a database host that drops packets must fail a connect in seconds, not hang ingest or /healthz
        connect_args={"connect_timeout": CONNECT_TIMEOUT_S} if url.startswith("postgresql") else {},
        max_overflow=10,
        json_serializer=_json_dumps,
        json_deserializer=orjson.loads,
    )


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest migration (idempotent; safe for several processes on PostgreSQL)."""
    config = Config()
    config.set_main_option("script_location", str(ALEMBIC_DIR))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
