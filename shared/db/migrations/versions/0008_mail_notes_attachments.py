"""mail notes and attachments: a note's text format and time spent, a mail's attachments apart

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01 10:00:00

Issue 12. ``notes.markdown`` (the Mail API's ``#markdown``: the text uses Text Formatting) and
``notes.time_spent`` (``#time_spent``, minutes); ``mail_attachments``, what a worker kept of a
mail (at most 20), its content in the row or, with ``EVENTDESK_MAIL_ATTACHMENT_DIR``, in a file
named by its SHA-256.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

_BIGID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("notes", schema=None) as batch_op:
        batch_op.add_column(sa.Column("markdown", sa.Boolean(), nullable=False,
                                      server_default=sa.false()))
        batch_op.add_column(sa.Column("time_spent", sa.Integer(), nullable=True))
    op.create_table(
        "mail_attachments",
        sa.Column("id", _BIGID, autoincrement=True, nullable=False),
        sa.Column("mail_id", _BIGID, nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("account_id", sa.String(length=64), nullable=False),
        sa.Column("request_id", _BIGID, nullable=True),
        sa.Column("filename", sa.String(length=255), nullable=False),
        sa.Column("content_type", sa.String(length=255), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("inline", sa.Boolean(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("content", sa.LargeBinary(), nullable=True),
        sa.ForeignKeyConstraint(["mail_id"], ["mail_messages.id"]),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"]),
        sa.ForeignKeyConstraint(["request_id"], ["requests.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("mail_id", "position", name="uq_mail_attachments_position"),
    )
    op.create_index("ix_mail_attachments_request", "mail_attachments",
                    ["account_id", "request_id"])


def downgrade() -> None:
    op.drop_index("ix_mail_attachments_request", table_name="mail_attachments")
    op.drop_table("mail_attachments")
    with op.batch_alter_table("notes", schema=None) as batch_op:
        batch_op.drop_column("time_spent")
        batch_op.drop_column("markdown")
