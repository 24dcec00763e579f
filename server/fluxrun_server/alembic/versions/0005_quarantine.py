"""quarantine: WAL records the aggregator could not store (poison records), kept aside for the operator

Before this, a record that failed to index (a summary status of 2^64-1 on SQLite, a 20 KB bundle id on
PostgreSQL) failed the whole batch on every pass, and nothing after it was indexed for any tenant. The
aggregator now isolates such a record, keeps its bytes in the object store and a row here, and goes on.
`fluxrun server quarantine list` shows the rows.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04 21:00:00
"""

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "quarantined_record",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=True),
        sa.Column("bundle_id", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("wal_lsn", sa.BigInteger(), nullable=False),
        sa.Column("reason", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("object_key", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("record_bytes", sa.BigInteger(), nullable=False),
        sa.Column("record_sha256", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("quarantined_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_quarantined_record_project_id", "quarantined_record", ["project_id", "id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_quarantined_record_project_id", table_name="quarantined_record")
    op.drop_table("quarantined_record")
