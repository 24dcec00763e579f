"""bundle identity: an execution is keyed by (bundle id, project), not by the bundle id alone

Bundle ids are chosen by the app, so they are unique only within a project. With the id alone as the key,
a bundle stored first under one project made every later bundle with that id, in any project, a silent
duplicate: another workspace could ingest a victim's bundle first and the victim's own delivery was
acknowledged and dropped. The key becomes (bundle_id, project_id): bundle id first, so the lookups by id
(a run's page, grants, CI reports) still walk the key, and lookups by (project, id) do too.

SQLite cannot change a primary key in place: the table is rebuilt, keeping every row's rowid, so the
FTS5 text index (migration 0002, `content_rowid='rowid'`) stays valid; its delete and update triggers,
dropped with the old table, are created again. PostgreSQL swaps the constraint.

Downgrade fails (and changes nothing) while two projects hold the same bundle id.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04 21:10:00
"""

import re

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

TEXT_TABLE_SQLITE = "execution_text"  # migration 0002
_TEXT_TRIGGERS = (
    f"""CREATE TRIGGER {TEXT_TABLE_SQLITE}_ad AFTER DELETE ON execution BEGIN
  INSERT INTO {TEXT_TABLE_SQLITE}({TEXT_TABLE_SQLITE}, rowid, route, error_type, error_message)
  VALUES ('delete', old.rowid, old.route, old.error_type, old.error_message);
END""",
    f"""CREATE TRIGGER {TEXT_TABLE_SQLITE}_au AFTER UPDATE OF route, error_type, error_message ON execution BEGIN
  INSERT INTO {TEXT_TABLE_SQLITE}({TEXT_TABLE_SQLITE}, rowid, route, error_type, error_message)
  VALUES ('delete', old.rowid, old.route, old.error_type, old.error_message);
  INSERT INTO {TEXT_TABLE_SQLITE}(rowid, route, error_type, error_message)
  VALUES (new.rowid, new.route, new.error_type, new.error_message);
END""",
)
_OLD_KEY = ("bundle_id",)
_NEW_KEY = ("bundle_id", "project_id")


def upgrade() -> None:
    _set_key(_NEW_KEY)


def downgrade() -> None:
    bind = op.get_bind()
    shared = bind.execute(
        sa.text("SELECT bundle_id FROM execution GROUP BY bundle_id HAVING count(*) > 1 LIMIT 1")
    ).first()
    if shared is not None:
        raise RuntimeError(
            f"cannot downgrade below 0006: bundle id {shared[0]!r} is stored in more than one project; "
            "delete one of them first"
        )
    _set_key(_OLD_KEY)


def _set_key(columns: tuple[str, ...]) -> None:
    bind = op.get_bind()
    if bind.dialect.name == "sqlite":
        _sqlite_rebuild(bind, columns)
        return
    name = sa.inspect(bind).get_pk_constraint("execution").get("name") or "execution_pkey"
    op.drop_constraint(name, "execution", type_="primary")
    op.create_primary_key("execution_pkey", "execution", list(columns))


def _sqlite_rebuild(bind: sa.engine.Connection, columns: tuple[str, ...]) -> None:
    """Copy `execution` into a table with the new key, rowids included, then swap them (the SQLite way)."""
    (table_sql,) = bind.execute(
        sa.text("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'execution'")
    ).one()
    key = re.compile(r"PRIMARY KEY \([^)]*\)")
    if len(key.findall(table_sql)) != 1:
        raise RuntimeError(f"unexpected definition of the execution table: {table_sql}")
    new_sql = key.sub(f"PRIMARY KEY ({', '.join(columns)})", table_sql)
    new_sql = re.sub(r"^CREATE TABLE \"?execution\"?", "CREATE TABLE execution_rekeyed", new_sql)
    indexes = [
        row[0]
        for row in bind.execute(
            sa.text("SELECT sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'execution' AND sql IS NOT NULL")
        )
    ]
    has_text = bool(
        bind.execute(
            sa.text(f"SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = '{TEXT_TABLE_SQLITE}'")
        ).scalar_one()
    )
    names = [row[1] for row in bind.execute(sa.text("PRAGMA table_info(execution)"))]
    column_list = ", ".join(f'"{name}"' for name in names)
    bind.execute(sa.text(new_sql))
    bind.execute(
        sa.text(f"INSERT INTO execution_rekeyed (rowid, {column_list}) SELECT rowid, {column_list} FROM execution")
    )
    bind.execute(sa.text("DROP TABLE execution"))  # its indexes and the text triggers go with it
    bind.execute(sa.text("ALTER TABLE execution_rekeyed RENAME TO execution"))
    for statement in indexes:
        bind.execute(sa.text(statement))
    if has_text:
        for statement in _TEXT_TRIGGERS:
            bind.execute(sa.text(statement))
