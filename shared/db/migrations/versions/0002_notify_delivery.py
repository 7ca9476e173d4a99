"""notify delivery: lease, per-host slots, disabled notify URLs, hub signature

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23 10:20:00

Issue 4 (notify URL delivery). Unreleased: edit in place rather than adding another revision.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import shared.db.models

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_BIGID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_WHEN = shared.db.models.UTCDateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("accounts", schema=None) as batch_op:
        batch_op.add_column(sa.Column(
            "notify_hub_signature", sa.Boolean(), nullable=False, server_default=sa.false()
        ))

    with op.batch_alter_table("notification_deliveries", schema=None) as batch_op:
        batch_op.add_column(sa.Column("host", sa.String(length=255), nullable=True))
        batch_op.add_column(sa.Column("lease_until", _WHEN, nullable=True))
        batch_op.add_column(sa.Column("lease_token", sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column("last_error", sa.String(length=255), nullable=True))
        batch_op.add_column(sa.Column("completed_at", _WHEN, nullable=True))
        batch_op.add_column(sa.Column(
            "schedule_offset", sa.Integer(), nullable=False, server_default="0"
        ))
        batch_op.create_index("ix_notification_deliveries_due", ["status", "next_attempt_at"])
        batch_op.create_index(
            "ix_notification_deliveries_account", ["account_id", "status", "id"]
        )

    with op.batch_alter_table("notification_attempts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("number", sa.Integer(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("verdict", sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column("address", sa.String(length=64), nullable=True))

    op.create_table(
        "notify_disabled_urls",
        sa.Column("id", _BIGID, autoincrement=True, nullable=False),
        sa.Column("account_id", sa.String(length=64), nullable=False),
        sa.Column("url_hash", sa.String(length=64), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("delivery_id", _BIGID, nullable=True),
        sa.Column("disabled_at", _WHEN, nullable=False),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("account_id", "url_hash"),
    )

    op.create_table(
        "notify_host_slots",
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("slot", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("holder", sa.String(length=32), nullable=True),
        sa.Column("lease_until", _WHEN, nullable=True),
        sa.PrimaryKeyConstraint("host", "slot"),
    )


def downgrade() -> None:
    op.drop_table("notify_host_slots")
    op.drop_table("notify_disabled_urls")
    with op.batch_alter_table("notification_attempts", schema=None) as batch_op:
        batch_op.drop_column("address")
        batch_op.drop_column("verdict")
        batch_op.drop_column("number")
    with op.batch_alter_table("notification_deliveries", schema=None) as batch_op:
        batch_op.drop_index("ix_notification_deliveries_account")
        batch_op.drop_index("ix_notification_deliveries_due")
        batch_op.drop_column("schedule_offset")
        batch_op.drop_column("completed_at")
        batch_op.drop_column("last_error")
        batch_op.drop_column("lease_token")
        batch_op.drop_column("lease_until")
        batch_op.drop_column("host")
    with op.batch_alter_table("accounts", schema=None) as batch_op:
        batch_op.drop_column("notify_hub_signature")
