"""SQLite text index: new executions are added to it by the aggregator in one statement per batch

Migration 0002 fed the FTS5 table `execution_text` from an AFTER INSERT trigger. FTS5 flushes its pending
terms to a new index segment at every savepoint, and a trigger runs each fired row under one, so the trigger
made every inserted execution write (and later merge) its own tiny segment: ~60 µs a row on this machine,
three times the cost of the row and its seven b-tree indexes together. The aggregator now inserts each
batch's text rows itself, right after the execution rows and in the same transaction
(`INSERT INTO execution_text(rowid, ...) SELECT ... FROM execution WHERE rowid > <the highest rowid before
the batch>`), which costs ~9 µs a row. The delete and update triggers stay: they fire for a few rows at a
time (retention, corrections), where the savepoint does not matter.

Anything else that inserts executions on SQLite must feed `execution_text` the same way, or run
`INSERT INTO execution_text(execution_text) VALUES('rebuild')` afterwards. PostgreSQL is unchanged (a GIN
index maintained by the database).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28 15:20:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

TEXT_TABLE_SQLITE = "execution_text"
_INSERT_TRIGGER = f"""CREATE TRIGGER {TEXT_TABLE_SQLITE}_ai AFTER INSERT ON execution BEGIN
  INSERT INTO {TEXT_TABLE_SQLITE}(rowid, route, error_type, error_message)
  VALUES (new.rowid, new.route, new.error_type, new.error_message);
END"""


def _has_text_table(bind: sa.engine.Connection) -> bool:
    sql = f"SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = '{TEXT_TABLE_SQLITE}'"
    return bool(bind.execute(sa.text(sql)).scalar_one())


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "sqlite":
        bind.execute(sa.text(f"DROP TRIGGER IF EXISTS {TEXT_TABLE_SQLITE}_ai"))


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "sqlite" and _has_text_table(bind):
        bind.execute(sa.text(_INSERT_TRIGGER))
        bind.execute(sa.text(f"INSERT INTO {TEXT_TABLE_SQLITE}({TEXT_TABLE_SQLITE}) VALUES ('rebuild')"))
