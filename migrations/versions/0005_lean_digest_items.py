"""digest_items keyed by (subscriber, article), with the delivery its only foreign key

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-25 18:40:00

Planning writes twenty digest_items rows per digest; checking three foreign
keys and maintaining two extra indexes for each of them was half its cost.
The natural key replaces the surrogate id and the unique constraint, and
deliveries lose an index that its unique key (subscriber_id, ...) already gives.
"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('digest_items', schema=None) as batch_op:
        batch_op.drop_constraint('fk_digest_items_article_id_articles', type_='foreignkey')
        batch_op.drop_constraint('fk_digest_items_topic_id_topics', type_='foreignkey')
        batch_op.drop_constraint('fk_digest_items_subscriber_id_subscribers', type_='foreignkey')
        batch_op.drop_index('ix_digest_items_article_id')
        batch_op.drop_constraint('uq_digest_items_subscriber_id', type_='unique')
        batch_op.drop_constraint('pk_digest_items', type_='primary')
        batch_op.drop_column('id')
        batch_op.alter_column('subscriber_id', existing_type=sa.Integer(), nullable=False)
        batch_op.create_primary_key('pk_digest_items', ['subscriber_id', 'article_id'])

    with op.batch_alter_table('deliveries', schema=None,
                              table_kwargs={'sqlite_autoincrement': True}) as batch_op:
        batch_op.drop_index('ix_deliveries_subscriber_id')


def downgrade():
    with op.batch_alter_table('deliveries', schema=None,
                              table_kwargs={'sqlite_autoincrement': True}) as batch_op:
        batch_op.create_index('ix_deliveries_subscriber_id', ['subscriber_id'], unique=False)

    postgres = op.get_bind().dialect.name == 'postgresql'
    with op.batch_alter_table('digest_items', schema=None) as batch_op:
        batch_op.drop_constraint('pk_digest_items', type_='primary')
        batch_op.add_column(sa.Column('id', sa.Integer(), nullable=True))
    op.execute(
        "UPDATE digest_items SET id = numbered.n FROM (SELECT subscriber_id AS s, article_id AS a, "
        "row_number() OVER (ORDER BY delivery_id, article_id) AS n FROM digest_items) AS numbered "
        "WHERE digest_items.subscriber_id = numbered.s AND digest_items.article_id = numbered.a"
    )
    if postgres:  # the id was a serial column
        op.execute("CREATE SEQUENCE digest_items_id_seq OWNED BY digest_items.id")
        op.execute("SELECT setval('digest_items_id_seq', COALESCE((SELECT max(id) FROM digest_items), 0) + 1, false)")
        op.execute("ALTER TABLE digest_items ALTER COLUMN id SET DEFAULT nextval('digest_items_id_seq')")
    with op.batch_alter_table('digest_items', schema=None) as batch_op:
        batch_op.alter_column('id', existing_type=sa.Integer(), nullable=False)
        batch_op.alter_column('subscriber_id', existing_type=sa.Integer(), nullable=True)
        batch_op.create_primary_key('pk_digest_items', ['id'])
        batch_op.create_unique_constraint('uq_digest_items_subscriber_id', ['subscriber_id', 'article_id'])
        batch_op.create_index('ix_digest_items_article_id', ['article_id'], unique=False)
        batch_op.create_foreign_key('fk_digest_items_subscriber_id_subscribers', 'subscribers',
                                    ['subscriber_id'], ['id'], ondelete='CASCADE')
        batch_op.create_foreign_key('fk_digest_items_topic_id_topics', 'topics', ['topic_id'], ['id'])
        batch_op.create_foreign_key('fk_digest_items_article_id_articles', 'articles',
                                    ['article_id'], ['id'], ondelete='CASCADE')
