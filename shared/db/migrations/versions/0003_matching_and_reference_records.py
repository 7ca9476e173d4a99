"""matching and reference records

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23 10:32:18.617703
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('problems',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=False, nullable=False),
    sa.Column('account_id', sa.String(length=64), nullable=False),
    sa.Column('subject', sa.String(length=255), nullable=False),
    sa.ForeignKeyConstraint(['account_id'], ['accounts.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('problems', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_problems_account_id'), ['account_id'], unique=False)

    op.create_table('workflows',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=False, nullable=False),
    sa.Column('account_id', sa.String(length=64), nullable=False),
    sa.Column('subject', sa.String(length=255), nullable=False),
    sa.ForeignKeyConstraint(['account_id'], ['accounts.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('workflows', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_workflows_account_id'), ['account_id'], unique=False)

    with op.batch_alter_table('notes', schema=None) as batch_op:
        batch_op.add_column(sa.Column('text_hash', sa.String(length=64), nullable=False, server_default=''))
        batch_op.drop_index(batch_op.f('ix_notes_request_id'))
        batch_op.create_index('ix_notes_request_hash', ['request_id', 'text_hash'], unique=False)

    with op.batch_alter_table('requests', schema=None) as batch_op:
        batch_op.add_column(sa.Column('match_key', sa.String(length=64), nullable=True))
        batch_op.create_index('ix_requests_match', ['account_id', 'match_key', 'created_at'], unique=False)
        batch_op.create_index('ix_requests_updated', ['account_id', 'updated_at'], unique=False)
        batch_op.create_foreign_key('fk_requests_workflow_id', 'workflows', ['workflow_id'], ['id'])
        batch_op.create_foreign_key('fk_requests_problem_id', 'problems', ['problem_id'], ['id'])



def downgrade() -> None:
    with op.batch_alter_table('requests', schema=None) as batch_op:
        batch_op.drop_constraint('fk_requests_problem_id', type_='foreignkey')
        batch_op.drop_constraint('fk_requests_workflow_id', type_='foreignkey')
        batch_op.drop_index('ix_requests_updated')
        batch_op.drop_index('ix_requests_match')
        batch_op.drop_column('match_key')

    with op.batch_alter_table('notes', schema=None) as batch_op:
        batch_op.drop_index('ix_notes_request_hash')
        batch_op.create_index(batch_op.f('ix_notes_request_id'), ['request_id'], unique=False)
        batch_op.drop_column('text_hash')

    with op.batch_alter_table('workflows', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_workflows_account_id'))

    op.drop_table('workflows')
    with op.batch_alter_table('problems', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_problems_account_id'))

    op.drop_table('problems')
