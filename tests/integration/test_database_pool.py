"""Pooled PostgreSQL connections: pinged after sitting idle, trusted when just used."""

import sqlite3
import time
from collections.abc import Iterator

import psycopg
import pytest
import sqlalchemy as sa
from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from service import database_pool
from service.database_pool import ping_idle_connections
from service.extensions import db
from service.models import Subscriber
from service.web.errors import _connection_lost
from tests.conftest import POSTGRES_ADMIN_URL

WINDOW = 0.3


def _pool_of_one(alive_window: float) -> sa.Engine:
    engine = sa.create_engine(POSTGRES_ADMIN_URL, pool_size=1, max_overflow=0)
    ping_idle_connections(engine, alive_window=alive_window)
    return engine


@pytest.fixture
def engine() -> Iterator[sa.Engine]:
    engine = _pool_of_one(WINDOW)
    yield engine
    engine.dispose()


def _backend(engine: sa.Engine) -> int:
    with engine.connect() as connection:
        return connection.scalar(sa.text("SELECT pg_backend_pid()"))


def _terminate(pid: int) -> None:
    admin = sa.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
    with admin.connect() as connection:
        assert connection.scalar(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
    admin.dispose()


def test_a_connection_idle_past_the_window_that_died_is_replaced_before_use(engine):
    first = _backend(engine)
    _terminate(first)
    time.sleep(WINDOW * 2)
    second = _backend(engine)  # no error: the ping found it dead and the pool connected anew
    assert second != first


def test_a_connection_used_a_moment_ago_is_not_pinged(engine):
    pings: list[int] = []
    original = engine.dialect.do_ping
    engine.dialect.do_ping = lambda dbapi_connection: pings.append(1) or original(dbapi_connection)
    try:
        same = {_backend(engine) for _ in range(20)}
        assert len(same) == 1 and pings == []
        time.sleep(WINDOW * 2)
        _backend(engine)
        assert pings == [1]
    finally:
        engine.dialect.do_ping = original


def test_inside_the_window_a_dead_connection_fails_once_and_the_pool_recovers():
    # The price of trusting a fresh connection: its next statement meets the disconnect.
    engine = _pool_of_one(60)
    first = _backend(engine)
    _terminate(first)
    with pytest.raises(OperationalError) as caught:
        _backend(engine)
    assert caught.value.connection_invalidated
    assert _backend(engine) != first
    engine.dispose()


def test_a_form_post_on_a_connection_the_database_dropped_gets_503_and_the_next_is_stored(
        stack, app, monkeypatch):
    if stack.name != "postgres":
        pytest.skip("SQLite has no server to lose")
    monkeypatch.setattr(database_pool, "ALIVE_WINDOW_SECONDS", 60)  # so the dead one is trusted
    own = stack.make_app()  # a pool of its own, holding the one connection the first post used
    client = own.test_client()
    form = {"email": "first@example.com", "topics": "marvel-news"}
    assert client.post("/subscribe", data=form).status_code == 200
    with own.app_context():
        pid = db.session.scalar(sa.text("SELECT pg_backend_pid()"))
        db.session.commit()  # back to the pool, where the next post takes it
        _terminate(pid)
        dropped = client.post("/subscribe", data={**form, "email": "second@example.com"})
        assert dropped.status_code == 503 and dropped.headers["Retry-After"] == "5"
        assert "try again" in dropped.get_data(as_text=True)
        assert client.post("/subscribe", json={**form, "email": "second@example.com",
                                               "topics": ["marvel-news"]}).status_code == 202
        stored = db.session.scalars(select(Subscriber.email).order_by(Subscriber.email)).all()
        db.engine.dispose()
    assert stored == ["first@example.com", "second@example.com"]


@pytest.mark.parametrize(("error", "lost"), [
    (psycopg.OperationalError("connection refused"), True),  # could not connect: no SQLSTATE
    (psycopg.errors.AdminShutdown("terminating connection"), True),
    (psycopg.errors.ConnectionFailure("server closed the connection"), True),
    (psycopg.errors.QueryCanceled("statement timeout"), False),
    (psycopg.errors.DeadlockDetected("deadlock"), False),
    (sqlite3.OperationalError("no such table: subscribers"), False),
])
def test_only_a_lost_connection_is_a_503_other_database_errors_stay_500s(error, lost):
    assert _connection_lost(OperationalError("SELECT 1", {}, error)) is lost


def test_a_query_that_fails_is_a_logged_500_not_a_503(stack, app, caplog):
    """A lock timeout is the query's failure, not the database's absence: no 'try again'."""
    if stack.name != "postgres":
        pytest.skip("a PostgreSQL lock timeout")
    impatient = stack.make_app(DATABASE_URL=stack.env["DATABASE_URL"] + "?options=-c%20lock_timeout%3D200")
    holder = sa.create_engine(stack.env["DATABASE_URL"], poolclass=sa.NullPool)
    with holder.connect() as connection, caplog.at_level("ERROR", logger="service.web.errors"):
        connection.execute(sa.text("LOCK TABLE subscribers IN ACCESS EXCLUSIVE MODE"))
        answer = impatient.test_client().post("/subscribe", data={"email": "locked@example.com",
                                                                  "topics": "marvel-news"})
        connection.rollback()
    holder.dispose()
    with impatient.app_context():
        db.engine.dispose()
    assert answer.status_code == 500 and "Retry-After" not in answer.headers
    assert "database error" in caplog.text and "LockNotAvailable" in caplog.text
