"""bounces, suppressions and sending pauses

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25 15:51:43.617794

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('sending_pauses',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('resumed_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_sending_pauses'))
    )
    op.create_table('suppressions',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('email_hash', sa.String(length=64), nullable=False),
    sa.Column('reason', sa.Enum('hard_bounce', 'soft_bounces', 'complaint', 'manual', 'erased', name='suppression_reason', native_enum=False, create_constraint=True, length=20), nullable=False),
    sa.Column('detail', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_suppressions')),
    sa.UniqueConstraint('email_hash', name=op.f('uq_suppressions_email_hash'))
    )
    op.create_table('bounces',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.Enum('hard', 'soft', 'complaint', 'policy', name='bounce_kind', native_enum=False, create_constraint=True, length=20), nullable=False),
    sa.Column('email_hash', sa.String(length=64), nullable=False),
    sa.Column('delivery_id', sa.Integer(), nullable=True),
    sa.Column('subscriber_id', sa.Integer(), nullable=True),
    sa.Column('status', sa.String(length=20), nullable=True),
    sa.Column('diagnostic', sa.Text(), nullable=True),
    sa.Column('received_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['delivery_id'], ['deliveries.id'], name=op.f('fk_bounces_delivery_id_deliveries'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['subscriber_id'], ['subscribers.id'], name=op.f('fk_bounces_subscriber_id_subscribers'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_bounces'))
    )
    with op.batch_alter_table('bounces', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_bounces_email_hash'), ['email_hash'], unique=False)
        batch_op.create_index('ix_bounces_kind_received_at', ['kind', 'received_at'], unique=False)
    # Partial: bounces that map to no delivery are told apart by time instead.
    op.create_index('uq_bounces_delivery_kind', 'bounces', ['delivery_id', 'kind'], unique=True,
                    postgresql_where=sa.text('delivery_id IS NOT NULL'),
                    sqlite_where=sa.text('delivery_id IS NOT NULL'))

    with op.batch_alter_table('subscribers', schema=None,
                              table_kwargs={'sqlite_autoincrement': True}) as batch_op:
        batch_op.add_column(sa.Column('soft_bounce_count', sa.Integer(), server_default='0', nullable=False))
        batch_op.add_column(sa.Column('suppressed_at', sa.DateTime(timezone=True), nullable=True))

    with op.batch_alter_table('deliveries', schema=None,
                              table_kwargs={'sqlite_autoincrement': True}) as batch_op:
        batch_op.drop_constraint(op.f('ck_deliveries_delivery_state'), type_='check')
        batch_op.create_check_constraint(
            'delivery_state',
            "state IN ('queued', 'sending', 'sent', 'deferred', 'failed', 'suppressed', 'bounced')")


def downgrade():
    with op.batch_alter_table('deliveries', schema=None,
                              table_kwargs={'sqlite_autoincrement': True}) as batch_op:
        batch_op.drop_constraint(op.f('ck_deliveries_delivery_state'), type_='check')
        batch_op.create_check_constraint(
            'delivery_state',
            "state IN ('queued', 'sending', 'sent', 'deferred', 'failed', 'suppressed')")

    with op.batch_alter_table('subscribers', schema=None,
                              table_kwargs={'sqlite_autoincrement': True}) as batch_op:
        batch_op.drop_column('suppressed_at')
        batch_op.drop_column('soft_bounce_count')

    op.drop_index('uq_bounces_delivery_kind', table_name='bounces')
    with op.batch_alter_table('bounces', schema=None) as batch_op:
        batch_op.drop_index('ix_bounces_kind_received_at')
        batch_op.drop_index(batch_op.f('ix_bounces_email_hash'))

    op.drop_table('bounces')
    op.drop_table('suppressions')
    op.drop_table('sending_pauses')

