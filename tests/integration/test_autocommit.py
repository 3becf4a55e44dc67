"""A statement that commits itself only when nothing else would ride on the session's commit."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from service.autocommit import can_commit_alone, commit_held_work, execute_alone
from service.extensions import db
from service.models import Topic


def test_a_statement_commits_alone_only_on_postgresql_with_nothing_open(session) -> None:  # type: ignore[no-untyped-def]
    session.commit()
    postgres = session.get_bind().dialect.name == "postgresql"
    assert can_commit_alone(session) is postgres
    session.scalars(sa.select(Topic)).first()  # a read opens a transaction
    assert not can_commit_alone(session)
    session.commit()
    session.add(Topic(slug="pending", name="Pending"))  # a change waiting for the next flush
    assert not can_commit_alone(session)
    session.rollback()


def test_what_it_wrote_is_committed_and_the_session_stays_clean(session) -> None:  # type: ignore[no-untyped-def]
    session.commit()
    if not can_commit_alone(session):
        pytest.skip("SQLite: the caller's own transaction writes it")
    table = Topic.__table__
    [row] = execute_alone(session, sa.update(table).where(table.c.slug == "marvel-news")
                          .values(description="Committed alone").returning(table.c.id))
    assert not session().in_transaction()
    with db.engine.connect() as other:  # another connection sees it: it is committed
        assert other.scalar(sa.select(table.c.description).where(table.c.id == row.id)) == "Committed alone"


def test_held_work_is_committed_and_an_idle_session_is_left_alone(session) -> None:  # type: ignore[no-untyped-def]
    session.commit()
    commits: list[object] = []
    count = commits.append  # one bound method, to remove the very listener added
    sa.event.listen(session(), "after_commit", count)
    try:
        commit_held_work(session)
        assert commits == []  # no empty transaction begun and committed
        session.add(Topic(slug="held", name="Held"))
        commit_held_work(session)
        assert len(commits) == 1
    finally:
        sa.event.remove(session(), "after_commit", count)
    with db.engine.connect() as other:
        assert other.scalar(sa.select(Topic.name).where(Topic.slug == "held")) == "Held"
