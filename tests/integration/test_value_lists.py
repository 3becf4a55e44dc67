"""``among`` and ``update_each``: the same rows on both databases, and one statement text for any length."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

from service.models import Delivery, DeliveryKind, DeliveryState, Topic
from service.value_lists import among, update_each


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


def test_update_each_sets_each_rows_own_values_through_the_column_types(session) -> None:  # type: ignore[no-untyped-def]
    deliveries = [Delivery(kind=DeliveryKind.CONFIRMATION) for _ in range(3)]
    session.add_all(deliveries)
    session.commit()
    untouched = Delivery(kind=DeliveryKind.CONFIRMATION)
    session.add(untouched)
    session.commit()
    sent_at = datetime(2026, 11, 29, 3, 0, tzinfo=UTC)
    rows = [
        {"id": deliveries[0].id, "state": DeliveryState.SENT, "last_error": None, "sent_at": sent_at},
        {"id": deliveries[1].id, "state": DeliveryState.FAILED, "last_error": "550 no such user",
         "sent_at": None},
        {"id": deliveries[2].id, "state": DeliveryState.DEFERRED, "last_error": "451 'later'; \"quoted\"",
         "sent_at": sent_at.astimezone(timezone(timedelta(hours=-5)))},
    ]
    update_each(session, Delivery.__table__, "id", rows)
    session.commit()
    session.expire_all()
    found = {d.id: (d.state, d.last_error, d.sent_at) for d in session.scalars(sa.select(Delivery))}
    assert found == {
        deliveries[0].id: (DeliveryState.SENT, None, sent_at),
        deliveries[1].id: (DeliveryState.FAILED, "550 no such user", None),
        deliveries[2].id: (DeliveryState.DEFERRED, "451 'later'; \"quoted\"", sent_at),
        untouched.id: (DeliveryState.QUEUED, None, None),
    }
    update_each(session, Delivery.__table__, "id", [])  # nothing to do, and no statement


def test_update_each_refuses_a_value_too_long_for_its_column_as_an_update_would(session) -> None:  # type: ignore[no-untyped-def]
    if session.get_bind().dialect.name != "postgresql":
        pytest.skip("SQLite does not enforce a column's length")
    delivery = Delivery(kind=DeliveryKind.CONFIRMATION)
    session.add(delivery)
    session.commit()
    with pytest.raises(sa.exc.DataError):  # not cut to fit
        update_each(session, Delivery.__table__, "id", [{"id": delivery.id, "message_id": "x" * 300}])
    session.rollback()
