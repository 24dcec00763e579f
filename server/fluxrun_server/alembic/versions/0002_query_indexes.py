"""run-list query indexes: each filter column leads into (started_at, bundle_id); a trigram text index

The runs list always orders by (started_at, bundle_id) descending inside one project. An index that has
the equality filter first and the sort key after it lets the database walk the newest matching rows and stop
after one page, instead of reading every row of a popular route or an old release and sorting them. The
two-column indexes of 0001 are prefixes of the new ones, so they go (one fewer index to maintain on ingest).

Text search (`q=`, a substring of the route, error type or message) cannot use a b-tree: a term that matches
nothing would read every row. So a trigram index finds the candidate rows, and the query keeps its exact
ILIKE test on them (the index only narrows):
- PostgreSQL: pg_trgm (a trusted extension) and one GIN index on the three columns joined by spaces.
  Without pg_trgm the migration logs that and the query scans as before.
- SQLite: an FTS5 table with the trigram tokenizer (SQLite 3.34+), external content keyed by the execution
  rowid and kept in step by triggers. Not in the SQLModel metadata (a virtual table and its shadow tables);
  after a VACUUM, which may renumber rowids, run `INSERT INTO execution_text(execution_text) VALUES('rebuild')`.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28 10:00:00
"""

import logging

import sqlalchemy as sa
from alembic import op

log = logging.getLogger("alembic.runtime.migration")

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

# (new index, filter column, the 0001 index it replaces or None)
_INDEXES = (
    ("ix_execution_project_release_started", "release", None),
    ("ix_execution_project_error_started", "error_type", "ix_execution_project_error"),
    ("ix_execution_project_route_started", "route", "ix_execution_project_route"),
    ("ix_execution_project_issue_started", "issue_id", "ix_execution_project_issue"),
    ("ix_execution_project_outcome_started", "outcome", None),
)


# Keep in step with fluxrun_server.api.routes.query (TEXT_EXPRESSION_PG, TEXT_TABLE_SQLITE).
TEXT_EXPRESSION_PG = "(coalesce(route, '') || ' ' || coalesce(error_type, '') || ' ' || coalesce(error_message, ''))"
TEXT_INDEX_PG = "ix_execution_text_trgm"
TEXT_TABLE_SQLITE = "execution_text"
_SQLITE_TEXT = (
    f"CREATE VIRTUAL TABLE {TEXT_TABLE_SQLITE} USING fts5(route, error_type, error_message, "
    "content='execution', content_rowid='rowid', tokenize='trigram')",
    f"""CREATE TRIGGER {TEXT_TABLE_SQLITE}_ai AFTER INSERT ON execution BEGIN
  INSERT INTO {TEXT_TABLE_SQLITE}(rowid, route, error_type, error_message)
  VALUES (new.rowid, new.route, new.error_type, new.error_message);
END""",
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
    f"INSERT INTO {TEXT_TABLE_SQLITE}({TEXT_TABLE_SQLITE}) VALUES ('rebuild')",
)


def upgrade() -> None:
    for name, column, old in _INDEXES:
        op.create_index(name, "execution", ["project_id", column, "started_at", "bundle_id"], unique=False)
        if old is not None:
            op.drop_index(old, table_name="execution")
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        _postgresql_text_index(bind)
    elif bind.dialect.name == "sqlite":
        _sqlite_text_index(bind)


def _postgresql_text_index(bind: sa.engine.Connection) -> None:
    try:
        with bind.begin_nested():  # a refused CREATE EXTENSION must not abort the migration's transaction
            bind.execute(sa.text("CREATE EXTENSION IF NOT EXISTS pg_trgm"))
    except sa.exc.DBAPIError as exc:
        log.warning("pg_trgm is not available (%s); text search on runs will scan instead of using an index", exc)
        return
    bind.execute(sa.text(f"CREATE INDEX {TEXT_INDEX_PG} ON execution USING gin ({TEXT_EXPRESSION_PG} gin_trgm_ops)"))


def _sqlite_text_index(bind: sa.engine.Connection) -> None:
    try:
        with bind.begin_nested():
            bind.execute(
                sa.text(f"CREATE VIRTUAL TABLE temp.{TEXT_TABLE_SQLITE}_probe USING fts5(x, tokenize='trigram')")
            )
            bind.execute(sa.text(f"DROP TABLE temp.{TEXT_TABLE_SQLITE}_probe"))
    except sa.exc.DBAPIError as exc:
        log.warning("SQLite has no FTS5 trigram tokenizer (%s); text search on runs will scan instead", exc)
        return
    for statement in _SQLITE_TEXT:
        bind.execute(sa.text(statement))


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        bind.execute(sa.text(f"DROP INDEX IF EXISTS {TEXT_INDEX_PG}"))
    elif bind.dialect.name == "sqlite":
        for suffix in ("ai", "ad", "au"):
            bind.execute(sa.text(f"DROP TRIGGER IF EXISTS {TEXT_TABLE_SQLITE}_{suffix}"))
        bind.execute(sa.text(f"DROP TABLE IF EXISTS {TEXT_TABLE_SQLITE}"))
    for name, column, old in reversed(_INDEXES):
        if old is not None:
            op.create_index(old, "execution", ["project_id", column], unique=False)
        op.drop_index(name, table_name="execution")
