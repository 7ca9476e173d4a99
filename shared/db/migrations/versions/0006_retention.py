"""retention: the retention mark, and autovacuum that keeps up with a purged log

Revision ID: 0006
Revises: 0004
Create Date: 2026-11-30 01:20:00

Issue 14. On PostgreSQL the three tables retention deletes from get their own autovacuum
thresholds (docs/operations.md, "Retention"): with the default scale factor of 0.2 a table of
tens of millions of rows would carry millions of dead rows before a vacuum made their space
reusable, and the purge's deletes would grow the files instead of recycling them.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import shared.db.models

revision = "0006"
down_revision = "0004"
branch_labels = None
depends_on = None

_WHEN = shared.db.models.UTCDateTime(timezone=True)
PURGED_TABLES = ("transactions", "notification_deliveries", "notification_attempts")
AUTOVACUUM = {
    # Vacuum after 1 % of the rows are dead (default 20 %), analyze after 2 % changed (10 %).
    "autovacuum_vacuum_scale_factor": "0.01",
    "autovacuum_analyze_scale_factor": "0.02",
    # Append-mostly between purges: keep the visibility map fresh for index-only scans.
    "autovacuum_vacuum_insert_scale_factor": "0.02",
}


def upgrade() -> None:
    op.create_table(
        "retention_marks",
        sa.Column("log", sa.String(length=32), nullable=False),
        sa.Column("removed_before", _WHEN, nullable=False),
        sa.Column("updated_at", _WHEN, nullable=False),
        sa.PrimaryKeyConstraint("log"),
    )
    if op.get_bind().dialect.name == "postgresql":
        options = ", ".join(f"{name} = {value}" for name, value in AUTOVACUUM.items())
        for table in PURGED_TABLES:
            op.execute(f"ALTER TABLE {table} SET ({options})")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for table in PURGED_TABLES:
            op.execute(f"ALTER TABLE {table} RESET ({', '.join(AUTOVACUUM)})")
    op.drop_table("retention_marks")
