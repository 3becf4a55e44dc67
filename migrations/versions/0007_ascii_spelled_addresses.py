"""subscribers' international domains in their ASCII spelling

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-29 16:30:00

Addresses were stored with an international domain in Unicode
("reader@bücher.example"), which our messages could not carry: their
confirmations failed to compose. The service now stores the ASCII (IDNA)
spelling SMTP takes ("reader@xn--bcher-kva.example") and looks addresses up
by it, so the rows stored before are rewritten to match. A row whose local
part is outside ASCII has no such spelling and stays as it is; a row whose
ASCII spelling another row already holds (the reader signed up again after the
change) stays too, rather than break the unique index. Suppression entries are
hashes and cannot be rewritten: lookups check both spellings' hashes instead.

Self-contained on purpose: a migration must not change when the service's
code does.
"""
import sqlalchemy as sa
from alembic import op
from email_validator import EmailNotValidError, validate_email

# revision identifiers, used by Alembic.
revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None

subscribers = sa.table("subscribers", sa.column("id", sa.Integer), sa.column("email", sa.String))


def upgrade():
    connection = op.get_bind()
    query = sa.select(subscribers.c.id, subscribers.c.email)
    if connection.dialect.name == "postgresql":
        query = query.where(subscribers.c.email.op("~")("[^\\x01-\\x7f]"))  # only rows outside ASCII
    for subscriber_id, email in connection.execute(query).all():
        ascii_spelling = _ascii_spelling(email)
        if ascii_spelling is None or ascii_spelling == email:
            continue
        taken = connection.execute(
            sa.select(subscribers.c.id).where(subscribers.c.email == ascii_spelling)).first()
        if taken is None:
            connection.execute(
                subscribers.update().where(subscribers.c.id == subscriber_id).values(email=ascii_spelling))


def downgrade():
    pass  # the ASCII spelling is the same address; the service before 0007 only mailed it less


def _ascii_spelling(email):
    if email.isascii():
        return None
    try:
        ascii_email = validate_email(email, check_deliverability=False).ascii_email
    except EmailNotValidError:
        return None
    return ascii_email.lower() if ascii_email else None
