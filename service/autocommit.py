"""One statement that commits itself, without BEGIN and COMMIT around it.

psycopg opens a transaction with a BEGIN of its own round trip before the first
statement, and the commit is another. A statement that is atomic alone and
whose caller would commit right after it can instead run on a connection in
autocommit mode: one round trip instead of three. That is only done when the
session has no transaction open and no change waiting to be flushed (the
commit would otherwise have taken those along), and on PostgreSQL (SQLite
allows one writer at a time, so a second connection would wait for the
session's).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Executable, Row
from sqlalchemy.orm import Session, scoped_session


def can_commit_alone(session: Session | scoped_session[Session]) -> bool:
    """On PostgreSQL, with no transaction open and no change waiting to be flushed."""
    return not _holds_work(session) and session.get_bind().dialect.name == "postgresql"


def commit_held_work(session: Session | scoped_session[Session]) -> None:
    """Commit what the session holds, and skip the commit when it holds nothing (after a
    statement that committed alone): SQLAlchemy would begin and end an empty transaction."""
    if _holds_work(session):
        session.commit()


def _holds_work(session: Session | scoped_session[Session]) -> bool:
    actual = session() if isinstance(session, scoped_session) else session
    return actual.in_transaction() or bool(actual.new or actual.dirty or actual.deleted)


def execute_alone(session: Session | scoped_session[Session], statement: Executable,
                  parameters: dict[str, Any] | None = None) -> list[Row[Any]]:
    """Run ``statement`` on a connection of its own in autocommit mode; its rows.

    Only when ``can_commit_alone(session)``.
    """
    with session.get_bind().connect() as connection:
        return list(connection.execution_options(isolation_level="AUTOCOMMIT").execute(
            statement, parameters))
