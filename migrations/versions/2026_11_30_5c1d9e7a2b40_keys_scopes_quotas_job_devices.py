"""API key scopes, expiry and last four characters; per-project quota overrides; a job's device count
as a column (the scheduler picks queued jobs by it)

Revision ID: 5c1d9e7a2b40
Revises: 1220bb404011
Create Date: 2026-11-30 06:00:00
"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = '5c1d9e7a2b40'
down_revision: Union[str, None] = '1220bb404011'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    with op.batch_alter_table('api_keys', schema=None) as batch_op:
        # Keys made before scopes existed could do everything: they stay admin keys.
        batch_op.add_column(sa.Column('scope', sa.String(length=16), nullable=False, server_default='admin'))
        batch_op.add_column(sa.Column('last4', sa.String(length=4), nullable=False, server_default=''))
        batch_op.add_column(sa.Column('expires_at', sa.BigInteger(), nullable=True))
    with op.batch_alter_table('projects', schema=None) as batch_op:
        batch_op.add_column(sa.Column('quotas', sa.JSON(), nullable=False, server_default='{}'))
    with op.batch_alter_table('fine_tuning_jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('devices', sa.Integer(), nullable=False, server_default='1'))
        batch_op.create_index('ix_fine_tuning_jobs_status_devices', ['status', 'devices'], unique=False)

    # Existing jobs: the device count they were created with, from their resolved hyperparameters.
    jobs = sa.table('fine_tuning_jobs', sa.column('id', sa.String), sa.column('devices', sa.Integer),
                    sa.column('hyperparameters', sa.JSON))
    connection = op.get_bind()
    for job_id, hyperparameters in connection.execute(sa.select(jobs.c.id, jobs.c.hyperparameters)).all():
        devices = int((hyperparameters or {}).get('devices') or 1)
        if devices != 1:
            connection.execute(jobs.update().where(jobs.c.id == job_id).values(devices=devices))

    # The server defaults only filled the existing rows; the application always sets these itself.
    for table, columns in (('api_keys', ('scope', 'last4')), ('projects', ('quotas',)),
                           ('fine_tuning_jobs', ('devices',))):
        with op.batch_alter_table(table, schema=None) as batch_op:
            for column in columns:
                batch_op.alter_column(column, server_default=None)


def downgrade() -> None:
    with op.batch_alter_table('fine_tuning_jobs', schema=None) as batch_op:
        batch_op.drop_index('ix_fine_tuning_jobs_status_devices')
        batch_op.drop_column('devices')
    with op.batch_alter_table('projects', schema=None) as batch_op:
        batch_op.drop_column('quotas')
    with op.batch_alter_table('api_keys', schema=None) as batch_op:
        batch_op.drop_column('expires_at')
        batch_op.drop_column('last4')
        batch_op.drop_column('scope')
