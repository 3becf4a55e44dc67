"""A fixed statement on the driver's cursor behaves as SQLAlchemy's execution would:
values stored alike, its errors, lost connections and a clean pool afterwards."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import DataError, OperationalError
from sqlalchemy.orm import Session

from service import database_pool
from service.fixed_statements import FixedStatement, execute_fixed_alone
from service.models import DeliveryState, UTCDateTime
from tests.conftest import POSTGRES_ADMIN_URL


@pytest.fixture
def session() -> Iterator[Session]:
    engine = sa.create_engine(POSTGRES_ADMIN_URL, pool_size=1, max_overflow=0)
    database_pool.ping_idle_connections(engine, alive_window=60)  # as the app's: the dead one is trusted
    with Session(engine) as session:
        yield session
    engine.dispose()


def _typed() -> sa.Select:
    # An enum constant the statement carries, stored under names of its own (as the models'
    # enums are stored under their values), and a UTC datetime the caller gives.
    stored_as = sa.Enum(DeliveryState, native_enum=False,
                        values_callable=lambda members: [f"stored-{m.value}" for m in members])
    return sa.select(sa.bindparam(None, DeliveryState.QUEUED, type_=stored_as),
                     sa.bindparam("at", type_=UTCDateTime()), sa.bindparam("count", type_=sa.Integer) + 1)


def test_values_are_processed_as_sqlalchemy_processes_them(session):
    fixed = FixedStatement(_typed)
    berlin = datetime(2026, 11, 29, 9, 30, tzinfo=timezone(timedelta(hours=1)))
    [(state, at, count)] = execute_fixed_alone(session, fixed, {"at": berlin, "count": 41})
    with session.get_bind().connect() as connection:
        expected = connection.execute(fixed.statement, {"at": berlin, "count": 41}).one()
    assert state == "stored-queued" and expected[0] == DeliveryState.QUEUED
    assert at == berlin and count == expected[2] == 42
    with pytest.raises(ValueError, match="naive datetime"):  # the column type's own check ran
        execute_fixed_alone(session, fixed, {"at": berlin.replace(tzinfo=None), "count": 1})


def test_parameters_must_be_exactly_the_statements(session):
    fixed = FixedStatement(_typed)
    with pytest.raises(KeyError, match="missing: \\['count'\\]"):
        execute_fixed_alone(session, fixed, {"at": datetime.now(UTC)})
    with pytest.raises(KeyError, match="unknown: \\['cuont'\\]"):
        execute_fixed_alone(session, fixed, {"at": datetime.now(UTC), "count": 1, "cuont": 1})


def test_a_failed_statement_raises_sqlalchemys_error_and_leaves_the_connection_usable(session):
    engine = session.get_bind()
    fixed = FixedStatement(lambda: sa.select(sa.literal_column("1") / sa.bindparam("zero", type_=sa.Integer)))
    with pytest.raises(DataError) as caught:  # division_by_zero, as SQLAlchemy would raise it
        execute_fixed_alone(session, fixed, {"zero": 0})
    assert not caught.value.connection_invalidated
    with engine.connect() as connection:  # the pool's only connection, back in transaction mode
        assert connection.connection.dbapi_connection.autocommit is False
        assert connection.scalar(sa.text("SELECT 1")) == 1


def test_a_lost_connection_is_sqlalchemys_and_the_pool_replaces_it(session):
    fixed = FixedStatement(lambda: sa.select(
        sa.func.pg_backend_pid() + sa.bindparam("zero", type_=sa.Integer)))
    [(first,)] = execute_fixed_alone(session, fixed, {"zero": 0})
    admin = sa.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
    with admin.connect() as connection:
        assert connection.scalar(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": first})
    admin.dispose()
    with pytest.raises(OperationalError) as caught:  # what the web tier answers with a 503
        execute_fixed_alone(session, fixed, {"zero": 0})
    assert caught.value.connection_invalidated
    [(second,)] = execute_fixed_alone(session, fixed, {"zero": 0})
    assert second != first


def test_a_statement_rendered_at_execution_is_refused(session):
    fixed = FixedStatement(lambda: sa.select(sa.literal_column("1")).where(
        sa.literal_column("2").in_(sa.bindparam("many", expanding=True))))
    with pytest.raises(ValueError, match="named parameters only"):
        execute_fixed_alone(session, fixed, {"many": [1, 2]})
