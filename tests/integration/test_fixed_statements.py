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
from service.web.errors import _connection_lost
from tests.conftest import POSTGRES_ADMIN_URL


def _session(url: str = POSTGRES_ADMIN_URL, pool_size: int = 1) -> Session:
    engine = sa.create_engine(url, pool_size=pool_size, max_overflow=0)
    database_pool.ping_idle_connections(engine, alive_window=60)  # as the app's: the dead one is trusted
    return Session(engine)


@pytest.fixture
def session() -> Iterator[Session]:
    with _session() as session:
        yield session
    session.get_bind().dispose()


def _terminate(*pids: int) -> None:
    admin = sa.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
    with admin.connect() as connection:
        for pid in pids:
            assert connection.scalar(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
    admin.dispose()


def _backend_pid() -> sa.Select:
    return sa.select(sa.func.pg_backend_pid() + sa.bindparam("zero", type_=sa.Integer))


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
    fixed = FixedStatement(_backend_pid)
    [(first,)] = execute_fixed_alone(session, fixed, {"zero": 0})
    _terminate(first)
    with pytest.raises(OperationalError) as caught:  # what the web tier answers with a 503
        execute_fixed_alone(session, fixed, {"zero": 0})
    assert caught.value.connection_invalidated and _connection_lost(caught.value)
    [(second,)] = execute_fixed_alone(session, fixed, {"zero": 0})
    assert second != first


def test_after_a_lost_connection_its_older_pool_mates_are_replaced_too():
    """As SQLAlchemy does on a disconnect: the server restarted, so every connection opened
    before the lost one is replaced at its next checkout, not found dead by its next statement."""
    session = _session(pool_size=2)
    engine = session.get_bind()
    fixed = FixedStatement(_backend_pid)
    with engine.connect() as one, engine.connect() as other:  # two connections in the pool
        pids = {connection.scalar(sa.text("SELECT pg_backend_pid()")) for connection in (one, other)}
    _terminate(*pids)
    with pytest.raises(OperationalError):
        execute_fixed_alone(session, fixed, {"zero": 0})
    [(fresh,)] = execute_fixed_alone(session, fixed, {"zero": 0})  # the other dead one is not used
    assert fresh not in pids
    engine.dispose()


def test_a_database_that_cannot_be_reached_is_sqlalchemys_error_too():
    session = _session("postgresql+psycopg://postgres@127.0.0.1:1/postgres")
    with pytest.raises(OperationalError) as caught:
        execute_fixed_alone(session, FixedStatement(_backend_pid), {"zero": 0})
    assert _connection_lost(caught.value)  # a 503, not a 500
    session.get_bind().dispose()


def test_a_value_the_driver_cannot_send_leaves_the_connection_out_of_autocommit(session):
    fixed = FixedStatement(lambda: sa.select(sa.bindparam("text", type_=sa.String)))
    with pytest.raises(UnicodeEncodeError):  # a lone surrogate: not the driver's error class
        execute_fixed_alone(session, fixed, {"text": "\ud800"})
    with session.get_bind().connect() as connection:  # the pool's only connection
        assert connection.connection.dbapi_connection.autocommit is False


def test_a_statement_rendered_at_execution_is_refused(session):
    fixed = FixedStatement(lambda: sa.select(sa.literal_column("1")).where(
        sa.literal_column("2").in_(sa.bindparam("many", expanding=True))))
    with pytest.raises(ValueError, match="named parameters only"):
        execute_fixed_alone(session, fixed, {"many": [1, 2]})
