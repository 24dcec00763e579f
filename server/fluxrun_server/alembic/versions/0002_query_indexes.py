"""run-list query indexes: each filter column leads into (started_at, bundle_id)

The runs list always orders by (started_at, bundle_id) descending inside one project. An index that has
the equality filter first and the sort key after it lets the database walk the newest matching rows and stop
after one page, instead of reading every row of a popular route or an old release and sorting them. The
two-column indexes of 0001 are prefixes of the new ones, so they go (one fewer index to maintain on ingest).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28 10:00:00
"""

from alembic import op

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


def upgrade() -> None:
    for name, column, old in _INDEXES:
        op.create_index(name, "execution", ["project_id", column, "started_at", "bundle_id"], unique=False)
        if old is not None:
            op.drop_index(old, table_name="execution")


def downgrade() -> None:
    for name, column, old in reversed(_INDEXES):
        if old is not None:
            op.create_index(old, "execution", ["project_id", column], unique=False)
        op.drop_index(name, table_name="execution")
