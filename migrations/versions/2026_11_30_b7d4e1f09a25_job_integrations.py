"""The experiment trackers a job logs to (OpenAI's ``integrations``: W&B, MLflow, TensorBoard)

Revision ID: b7d4e1f09a25
Revises: 8e2f4a6c1d93
Create Date: 2026-11-30 13:00:00
"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = 'b7d4e1f09a25'
down_revision: Union[str, None] = '8e2f4a6c1d93'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    with op.batch_alter_table('fine_tuning_jobs', schema=None) as batch_op:
        # Null for every existing job: it logs to no tracker.
        batch_op.add_column(sa.Column('integrations', sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('fine_tuning_jobs', schema=None) as batch_op:
        batch_op.drop_column('integrations')
