"""mail: raw messages of the Mail API, accounts' Email Policy

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30 01:15:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import shared.db.models

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

_BIGID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_WHEN = shared.db.models.UTCDateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("accounts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("mail_policy", sa.JSON(), nullable=False,
                                      server_default="{}"))
    op.create_table(
        "mail_messages",
        sa.Column("id", _BIGID, autoincrement=True, nullable=False),
        sa.Column("transid", sa.String(length=64), nullable=False),
        sa.Column("account_id", sa.String(length=64), nullable=False),
        sa.Column("recipient", sa.String(length=320), nullable=False),
        sa.Column("team_id", _BIGID, nullable=True),
        sa.Column("message_id", sa.String(length=255), nullable=True),
        sa.Column("raw", sa.LargeBinary(), nullable=False),
        sa.Column("peer", sa.String(length=64), nullable=True),
        sa.Column("received_at", _WHEN, nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("request_id", _BIGID, nullable=True),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"]),
        sa.ForeignKeyConstraint(["team_id"], ["teams.id"]),
        sa.ForeignKeyConstraint(["request_id"], ["requests.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("transid"),
        sa.UniqueConstraint("account_id", "message_id", name="uq_mail_messages_message_id"),
    )
    op.create_index("ix_mail_messages_pending", "mail_messages", ["status", "received_at"])


def downgrade() -> None:
    op.drop_index("ix_mail_messages_pending", table_name="mail_messages")
    op.drop_table("mail_messages")
    with op.batch_alter_table("accounts", schema=None) as batch_op:
        batch_op.drop_column("mail_policy")
