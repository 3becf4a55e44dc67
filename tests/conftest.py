"""Fixtures: the two stacks (PostgreSQL + Redis, and the embedded SQLite default),
a real SMTP server (aiosmtpd) whose received mail tests read, and a real Celery
worker process per stack.

Each stack is a session fixture: its database is created and migrated once.
Every test starts from empty tables (truncation, because the worker process
commits in its own connections) and an empty SMTP mailbox.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import flask_migrate
import pytest
import redis
import sqlalchemy as sa
from flask import Flask
from sqlalchemy.exc import OperationalError

from service import create_app
from service.extensions import db
from service.topics import seed_demo_topics
from tests.smtp import SMTPServer

PROJECT_ROOT = Path(__file__).resolve().parent.parent
POSTGRES_ADMIN_URL = os.environ.get(
    "TEST_POSTGRES_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
TEST_DATABASE = os.environ.get("TEST_DATABASE_NAME", "newsletter_test")
TEST_REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
PUBLIC_BASE_URL = "http://newsletter.example.com"


@dataclass
class Stack:
    """One way to run the service: its settings and its application."""

    name: str
    env: dict[str, str]
    app: Flask
    log_dir: Path

    def make_app(self, **overrides: str) -> Flask:
        """Another app on the same database, with some settings changed."""
        return create_app({**self.env, **overrides})


# ---------------------------------------------------------------- SMTP


@pytest.fixture(scope="session")
def smtp_server() -> Iterator[SMTPServer]:
    server = SMTPServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def smtp(smtp_server: SMTPServer) -> SMTPServer:
    """The SMTP server with an empty mailbox and no injected failures."""
    smtp_server.reset()
    return smtp_server


# ---------------------------------------------------------------- stacks


def _common_env(smtp_server: SMTPServer, instance: Path) -> dict[str, str]:
    return {
        "INSTANCE_PATH": str(instance),
        "PUBLIC_BASE_URL": PUBLIC_BASE_URL,
        "MAIL_FROM": "Marvel News <news@example.com>",
        "SMTP_HOST": "127.0.0.1",
        "SMTP_PORT": str(smtp_server.port),
        "SMTP_TIMEOUT": "5",
        "DELIVERY_RETRY_BASE_SECONDS": "0.2",
        "DELIVERY_STALE_SECONDS": "1",
        "SEED_DEMO_TOPICS": "false",
        "LOG_LEVEL": "INFO",
        # Tests post the form far more often than a person would; the limits
        # themselves are tested with apps that set them low.
        "SUBSCRIBE_LIMIT_PER_IP": "100000/minute",
        "SUBSCRIBE_LIMIT_PER_ADDRESS": "100000/minute",
        "SUBSCRIBE_LIMIT_PER_DOMAIN": "100000/minute",
        "LIMITER_STORAGE_URL": "memory://",
    }


def _postgres_env() -> dict[str, str]:
    admin = sa.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(sa.text(f"DROP DATABASE IF EXISTS {TEST_DATABASE} WITH (FORCE)"))
            connection.execute(sa.text(f"CREATE DATABASE {TEST_DATABASE}"))
    except OperationalError as error:
        pytest.fail(f"PostgreSQL is required for the tests and is not reachable: {error}")
    finally:
        admin.dispose()
    try:
        redis.Redis.from_url(TEST_REDIS_URL).flushdb()
    except redis.ConnectionError as error:
        pytest.fail(f"Redis is required for the tests and is not reachable: {error}")
    database_url = POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{TEST_DATABASE}"
    return {
        "DATABASE_URL": database_url,
        "CELERY_BROKER_URL": TEST_REDIS_URL,
        # Named, so apps a test points at a dead broker keep a working rate-limit store.
        "LIMITER_STORAGE_URL": TEST_REDIS_URL,
        "SECRET_KEY": "test-secret-key-that-is-long-enough",
    }


@pytest.fixture(scope="session", params=["postgres", "sqlite"])
def stack(request: pytest.FixtureRequest, smtp_server: SMTPServer,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """PostgreSQL + Redis (production), or the embedded default (SQLite + SQLite broker)."""
    instance = tmp_path_factory.mktemp(f"instance-{request.param}")
    env = _common_env(smtp_server, instance)
    if request.param == "postgres":
        env.update(_postgres_env())
    # The sqlite stack sets no DATABASE_URL, broker or key: the embedded defaults.
    app = create_app(env)
    with app.app_context():
        flask_migrate.upgrade()
    yield Stack(request.param, env, app, tmp_path_factory.mktemp(f"logs-{request.param}"))
    with app.app_context():
        db.engine.dispose()


def reset_state(app: Flask) -> None:
    """Empty every table and the task queue."""
    with app.app_context():
        app.extensions["celery"].control.purge()
        app.extensions["subscribe_limits"].reset()
        tables = [table.name for table in reversed(db.metadata.sorted_tables)]
        for attempt in range(5):
            try:
                if db.engine.dialect.name == "postgresql":
                    db.session.execute(sa.text(f"TRUNCATE {', '.join(tables)} CASCADE"))
                else:
                    for table in tables:
                        db.session.execute(sa.text(f"DELETE FROM {table}"))
                db.session.commit()
                break
            except OperationalError:
                # A worker still finishing the previous test's leftovers can
                # deadlock with TRUNCATE's table locks; PostgreSQL picks us, we retry.
                db.session.rollback()
                if attempt == 4:
                    raise
                time.sleep(0.2)
        db.session.remove()


@pytest.fixture
def app(stack: Stack) -> Flask:
    """The stack's application with empty tables and the demo topics."""
    reset_state(stack.app)
    with stack.app.app_context():
        seed_demo_topics(db.session)
        db.session.commit()
    return stack.app


@pytest.fixture
def session(app: Flask) -> Iterator[sa.orm.Session]:
    """A database session inside an application context."""
    with app.app_context():
        yield db.session
        db.session.rollback()


@pytest.fixture
def client(app: Flask):  # type: ignore[no-untyped-def]
    return app.test_client()


# ---------------------------------------------------------------- worker


class WorkerProcess:
    """``celery -A tasks.worker worker`` as the Procfile runs it, in a subprocess."""

    def __init__(self, env: dict[str, str], log_path: Path, name: str, concurrency: int = 2) -> None:
        self.env = {**os.environ, **env}
        self.log_path = log_path
        self.name = name
        self.concurrency = concurrency
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60) -> None:
        self.log_path.write_text("")
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "tasks.worker", "worker", "--loglevel=INFO",
             "--pool=prefork", f"--concurrency={self.concurrency}", f"--hostname={self.name}@%h",
             "--without-gossip", "--without-mingle", "--without-heartbeat"],
            cwd=PROJECT_ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so kill() takes the pool children too
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if " ready." in self.log_path.read_text(errors="replace"):
                return
            if self.process.poll() is not None:
                break
            time.sleep(0.2)
        raise RuntimeError(f"worker did not start:\n{self.log_path.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def kill(self) -> None:
        """SIGKILL the main process and its pool children at once, as a crash would."""
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        self.process = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


_workers: dict[str, WorkerProcess] = {}


@contextmanager
def another_app(stack: Stack, **overrides: str) -> Iterator[Flask]:
    """Another app on the stack's database with some settings changed, inside its context;
    its session rolled back and its connections closed afterwards."""
    served = stack.make_app(**overrides)
    with served.app_context():
        yield served
        db.session.rollback()
        db.engine.dispose()


def stop_shared_worker(stack: Stack) -> None:
    """Stop the stack's shared worker, for tests that must own every consumer of the queue."""
    running = _workers.pop(stack.name, None)
    if running is not None:
        running.stop()


@pytest.fixture
def worker(stack: Stack, app: Flask) -> WorkerProcess:
    """A running worker for this stack, started once and shared by its tests."""
    running = _workers.get(stack.name)
    if running is None or running.process is None or running.process.poll() is not None:
        running = WorkerProcess(stack.env, stack.log_dir / "worker.log", f"test-{stack.name}")
        running.start()
        _workers[stack.name] = running
    return running


@pytest.fixture(scope="session", autouse=True)
def _stop_workers() -> Iterator[None]:
    yield
    for running in _workers.values():
        running.stop()


# ---------------------------------------------------------------- helpers


def wait_until(check: Callable[[], object], timeout: float = 20, interval: float = 0.1,
               message: str = "condition") -> object:
    """Poll ``check`` until it returns something truthy; each poll sees fresh data."""
    deadline = time.monotonic() + timeout
    while True:
        db.session.rollback()
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {message}")
        time.sleep(interval)
