"""Jobs of two kinds (fine-tuning, evaluation), the lineage of models trained on from a fine-tuned one,
and the evaluation a job measured before its first step

Revision ID: 8e2f4a6c1d93
Revises: 5c1d9e7a2b40
Create Date: 2026-11-30 09:00:00
"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = '8e2f4a6c1d93'
down_revision: Union[str, None] = '5c1d9e7a2b40'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    with op.batch_alter_table('fine_tuning_jobs', schema=None) as batch_op:
        # Every existing job fine-tuned; evaluations (POST /v1/evaluations) share the queue and the table.
        batch_op.add_column(sa.Column('kind', sa.String(length=16), nullable=False, server_default='fine_tune'))
        batch_op.add_column(sa.Column('baseline_metrics', sa.JSON(), nullable=True))
        # The base model a job's weights go back to, when it starts from a fine-tuned model or checkpoint.
        batch_op.add_column(sa.Column('base_model', sa.String(length=500), nullable=True))
        batch_op.create_index('ix_fine_tuning_jobs_project_kind', ['project_id', 'kind'], unique=False)
    with op.batch_alter_table('fine_tuned_models', schema=None) as batch_op:
        batch_op.add_column(sa.Column('parent', sa.String(length=700), nullable=True))
    with op.batch_alter_table('fine_tuning_jobs', schema=None) as batch_op:
        batch_op.alter_column('kind', server_default=None)


def downgrade() -> None:
    with op.batch_alter_table('fine_tuned_models', schema=None) as batch_op:
        batch_op.drop_column('parent')
    with op.batch_alter_table('fine_tuning_jobs', schema=None) as batch_op:
        batch_op.drop_index('ix_fine_tuning_jobs_project_kind')
        batch_op.drop_column('base_model')
        batch_op.drop_column('baseline_metrics')
        batch_op.drop_column('kind')
