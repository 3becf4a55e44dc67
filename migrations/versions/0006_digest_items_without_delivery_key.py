"""digest_items without a foreign key to deliveries

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-28 19:30:00

Planning inserts twenty digest_items rows per digest, each pointing at a
delivery the same statement has just inserted. PostgreSQL checked that key
row by row, locking the delivery each time: a quarter to a third of a planning
batch (EXPLAIN ANALYZE in docs/benchmarks.md). The service never deletes a
delivery, so the key's cascade never ran; the index on delivery_id stays, for
the workers that load a group's items.
"""
from alembic import op


# revision identifiers, used by Alembic.
revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('digest_items', schema=None) as batch_op:
        batch_op.drop_constraint('fk_digest_items_delivery_id_deliveries', type_='foreignkey')


def downgrade():
    with op.batch_alter_table('digest_items', schema=None) as batch_op:
        batch_op.create_foreign_key('fk_digest_items_delivery_id_deliveries', 'deliveries',
                                    ['delivery_id'], ['id'], ondelete='CASCADE')
