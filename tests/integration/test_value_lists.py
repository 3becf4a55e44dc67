"""``among``: the same rows as ``IN`` on both databases, and one statement text for any length."""

from __future__ import annotations

import sqlalchemy as sa

from service.models import Topic
from service.value_lists import among


def _names(session, ids) -> list[str]:  # type: ignore[no-untyped-def]
    query = sa.select(Topic.name).where(among(session, Topic.id, ids)).order_by(Topic.name)
    return list(session.scalars(query))


def test_among_selects_what_in_selects(session) -> None:  # type: ignore[no-untyped-def]
    everything = {topic.id: topic.name for topic in session.scalars(sa.select(Topic))}
    some = sorted(everything)[:2]
    assert _names(session, some) == sorted(everything[i] for i in some)
    assert _names(session, [*some, *some]) == sorted(everything[i] for i in some)  # duplicates
    assert _names(session, iter(everything)) == sorted(everything.values())  # any iterable, once
    assert _names(session, []) == []
    assert _names(session, [-1]) == []


def test_among_renders_one_statement_for_any_length_on_postgresql(session) -> None:  # type: ignore[no-untyped-def]
    dialect = session.get_bind().dialect

    def sql(ids: list[int]) -> str:
        statement = sa.select(Topic.id).where(among(session, Topic.id, ids))
        return str(statement.compile(dialect=dialect))

    if dialect.name == "postgresql":
        assert sql(list(range(3))) == sql(list(range(60)))
        assert "ANY" in sql([1])
    else:
        assert "IN" in sql([1])
