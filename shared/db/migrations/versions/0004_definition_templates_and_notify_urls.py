"""event definition templates, default notify URLs of definitions and keys

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30 01:10:00

Issue 10, items 5 and 6. New nullable columns only: existing rows keep working unchanged (no
template, no default notify URL).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("event_definitions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("subject_template", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("note_template", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("notifyurl", sa.Text(), nullable=True))
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.add_column(sa.Column("notifyurl", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.drop_column("notifyurl")
    with op.batch_alter_table("event_definitions", schema=None) as batch_op:
        batch_op.drop_column("notifyurl")
        batch_op.drop_column("note_template")
        batch_op.drop_column("subject_template")
