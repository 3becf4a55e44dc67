"""Flask extensions, created unbound and initialised by the application factory."""

from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import MetaData
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import DeclarativeBase

# Named constraints let Alembic alter them on SQLite (batch mode) and PostgreSQL alike.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def _render_migration_type(type_: str, obj: object, autogen_context: object) -> str | bool:
    """Write our UTCDateTime as a plain timezone-aware DateTime in migration scripts."""
    if type_ == "type" and type(obj).__name__ == "UTCDateTime":
        return "sa.DateTime(timezone=True)"
    return False


db = SQLAlchemy(model_class=Base)


def discard_session() -> None:
    """End the scoped session, even if the database dropped its connection meanwhile.

    Rolling back on a connection the server terminated raises once (SQLAlchemy
    invalidates the connection as it does); the second close succeeds. Without
    this, a failover would turn the end of a finished request or task into an error.
    """
    try:
        db.session.remove()
    except DBAPIError:
        db.session.remove()
migrate = Migrate(render_as_batch=True, compare_type=True, render_item=_render_migration_type)
