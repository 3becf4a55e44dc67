"""A digest fan-out survives a killed worker, an SMTP outage, a broker restart
and dropped database connections: at the SMTP server, every reader has their
digest and nobody has it twice (but for the one window SMTP itself leaves, see
README "Delivery guarantees").

These run on PostgreSQL + Redis with worker processes the tests own.
"""

import shutil
import socket
import subprocess
import threading
import time
from collections import Counter
from datetime import timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy import func, insert, select

from service.articles import ArticleInput, ingest_articles
from service.config import get_settings
from service.digests import DigestFilter
from service.extensions import db, discard_session
from service.models import (
    Delivery,
    DeliveryKind,
    DeliveryState,
    Frequency,
    Subscriber,
    SubscriberStatus,
    Subscription,
    SubscriptionStatus,
    Topic,
    utcnow,
)
from tasks.delivery import sweep_stalled_deliveries
from tasks.digests import plan_and_publish
from tests.conftest import WorkerProcess, stop_shared_worker

pytestmark = [pytest.mark.integration, pytest.mark.parametrize("stack", ["postgres"], indirect=True)]

# Short leases so a crashed worker's rows are taken back within the test.
RECOVERY = {"DELIVERY_LEASE_SECONDS": "3", "DELIVERY_STALE_SECONDS": "1", "DIGEST_BATCH_SIZE": "200"}


def _seed_readers(count: int) -> list[str]:
    """``count`` confirmed daily readers of Marvel News and three new articles for them."""
    since = utcnow() - timedelta(days=1)
    emails = [f"reader{n:05d}@example.com" for n in range(count)]
    db.session.execute(insert(Subscriber), [
        {"email": email, "frequency": Frequency.DAILY, "status": SubscriberStatus.CONFIRMED,
         "token_epoch": 1, "timezone": "UTC", "confirmed_at": since, "digest_since": since,
         "created_at": since, "soft_bounce_count": 0} for email in emails])
    topic_id = db.session.scalar(select(Topic.id).where(Topic.slug == "marvel-news"))
    ids = db.session.scalars(select(Subscriber.id)).all()
    db.session.execute(insert(Subscription), [
        {"subscriber_id": sid, "topic_id": topic_id, "status": SubscriptionStatus.CONFIRMED,
         "created_at": since, "confirmed_at": since} for sid in ids])
    ingest_articles(db.session, [
        ArticleInput(title=f"Marvel story {n}", url=f"https://www.example.com/marvel/{n}",
                     published_at=utcnow() - timedelta(hours=n + 1), tags=["marvel"],
                     summary="Hayley Atwell gave fans a brief look behind the scenes.")
        for n in range(3)])
    db.session.commit()
    return emails


def _digests_sent() -> int:
    # A fresh session each time: the test's own connections may have been dropped too.
    discard_session()
    return db.session.scalar(select(func.count()).select_from(Delivery).where(
        Delivery.kind == DeliveryKind.DIGEST, Delivery.state == DeliveryState.SENT))


def _wait_for_arrivals(smtp, count: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while len(smtp.messages) < count:
        assert time.monotonic() < deadline, f"only {len(smtp.messages)} of {count} arrived"
        time.sleep(0.05)


def _drain(expected: int, timeout: float = 180) -> None:
    """Run the sweep (what beat does) until every digest is recorded as sent."""
    deadline = time.monotonic() + timeout
    while _digests_sent() < expected:
        assert time.monotonic() < deadline, f"only {_digests_sent()} of {expected} digests sent"
        sweep_stalled_deliveries.run()
        time.sleep(1)


def _check_everyone_got_exactly_one(smtp, emails, allowed_duplicates: int = 0) -> None:
    digests = [m for m in smtp.messages if "/confirm/" not in m.text]
    per_reader = Counter(r for m in digests for r in m.recipients)
    assert set(per_reader) == set(emails), "someone got no digest"
    duplicated = [email for email, n in per_reader.items() if n > 1]
    assert len(duplicated) <= allowed_duplicates, f"{len(duplicated)} readers got two digests"
    for email in duplicated:
        # The one window SMTP leaves: then both copies carry the same Message-ID.
        ids = {m.message["Message-ID"] for m in digests if email in m.recipients}
        assert len(ids) == 1
    assert _digests_sent() == len(emails)


@pytest.fixture
def own_worker(stack, app, tmp_path):
    """Workers this test starts and kills; the shared one is stopped so none competes."""
    stop_shared_worker(stack)
    started: list[WorkerProcess] = []

    def start(name: str, **env: str) -> WorkerProcess:
        worker = WorkerProcess({**stack.env, **RECOVERY, **env}, tmp_path / f"{name}.log", name)
        worker.start()
        started.append(worker)
        return worker

    yield start
    for worker in started:
        if worker.process is not None:
            worker.stop()


def test_a_worker_killed_mid_fan_out_loses_nothing_and_sends_nothing_twice(stack, app, smtp, own_worker):
    planner = stack.make_app(**RECOVERY)
    with planner.app_context():
        emails = _seed_readers(2000)
        first = own_worker("doomed")
        assert plan_and_publish(force=True, only=DigestFilter()) == 2000
        _wait_for_arrivals(smtp, 300)
        first.kill()
        arrived_before_restart = len(smtp.messages)
        assert arrived_before_restart < 2000, "the fan-out finished before the kill; nothing was tested"
        own_worker("replacement")
        _drain(len(emails))
        # Each killed pool process may have been inside that window: sent part of a
        # group whose outcomes were not yet committed ("Delivery guarantees").
        group = get_settings().DELIVERY_GROUP_SIZE
        _check_everyone_got_exactly_one(smtp, emails, allowed_duplicates=first.concurrency * group)


def test_an_smtp_outage_mid_fan_out_defers_and_then_delivers_everything(stack, app, smtp, own_worker):
    planner = stack.make_app(**RECOVERY)
    with planner.app_context():
        emails = _seed_readers(300)
        own_worker("steady")
        with smtp.down():
            assert plan_and_publish(force=True, only=DigestFilter()) == 300
            deadline = time.monotonic() + 30
            while not db.session.scalar(select(func.count()).select_from(Delivery).where(
                    Delivery.state == DeliveryState.DEFERRED)):
                assert time.monotonic() < deadline, "nothing was deferred while SMTP was down"
                db.session.rollback()
                time.sleep(0.1)
            assert smtp.messages == []
        _drain(len(emails))
        _check_everyone_got_exactly_one(smtp, emails)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class PrivateRedis:
    """A redis-server of this test's own, so restarting it disturbs nobody else."""

    def __init__(self) -> None:
        self.port = _free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [shutil.which("redis-server") or "redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.05)

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait()


@pytest.fixture
def private_redis():
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is required for the broker restart test")
    server = PrivateRedis()
    server.start()
    yield server
    if server.process is not None and server.process.poll() is None:
        server.kill()


def test_a_broker_restart_mid_fan_out_loses_nothing(stack, app, smtp, own_worker, private_redis):
    broker = {"CELERY_BROKER_URL": private_redis.url}
    planner = stack.make_app(**RECOVERY, **broker)
    with planner.app_context():
        emails = _seed_readers(600)
        own_worker("survivor", **broker)
        assert plan_and_publish(force=True, only=DigestFilter()) == 600
        _wait_for_arrivals(smtp, 100)
        private_redis.kill()  # a restart without persistence: every queued task is gone
        time.sleep(1)
        private_redis.start()
        _drain(len(emails))
        _check_everyone_got_exactly_one(smtp, emails)


def test_dropped_database_connections_mid_fan_out_lose_nothing(stack, app, smtp, own_worker):
    planner = stack.make_app(**RECOVERY)
    with planner.app_context():
        emails = _seed_readers(600)
        # Paced, so the fan-out is still running while the connections are dropped.
        own_worker("steady", SEND_RATE_LIMIT="100")
        stop = threading.Event()
        killed: list[int] = []

        def drop_connections() -> None:
            admin = sa.create_engine(stack.env["DATABASE_URL"], isolation_level="AUTOCOMMIT")
            with admin.connect() as connection:
                while not stop.wait(0.4):
                    killed.extend(connection.execute(sa.text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = current_database() AND pid <> pg_backend_pid() "
                        "AND backend_type = 'client backend'")).scalars())
            admin.dispose()

        assert plan_and_publish(force=True, only=DigestFilter()) == 600
        _wait_for_arrivals(smtp, 50)
        dropper = threading.Thread(target=drop_connections)
        dropper.start()
        try:
            _wait_for_arrivals(smtp, 300)
        finally:
            stop.set()
            dropper.join()
        assert killed, "no connection was dropped; nothing was tested"
        _drain(len(emails))
        _check_everyone_got_exactly_one(smtp, emails)
