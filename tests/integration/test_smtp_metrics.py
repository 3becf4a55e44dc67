"""SMTP latency and errors on /metrics: observed by the real worker process as it talks to
the real SMTP server, added up in the shared store (Redis on the postgres stack, the
instance folder's file on the sqlite stack) and read by the web app."""

from __future__ import annotations

import time
import uuid

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select

from service.extensions import db
from service.mail.timing import RedisMetricsStore
from service.models import Delivery, DeliveryState
from service.subscriptions import SubscriptionRequest, subscribe
from tasks.delivery import publish_deliveries
from tests.conftest import TEST_REDIS_URL

pytestmark = pytest.mark.integration

TOKEN = "metrics-token-for-tests-0123456789"
COUNT = "newsletter_smtp_send_seconds_count"
SUM = "newsletter_smtp_send_seconds_sum"
ALL = "newsletter_smtp_send_seconds_bucket{le=+Inf}"
PERMANENT = "newsletter_smtp_errors_total{kind=permanent}"
TEMPORARY = "newsletter_smtp_errors_total{kind=temporary}"


@pytest.fixture
def scrape(stack, app):
    metrics_app = stack.make_app(METRICS_TOKEN=TOKEN)
    client = metrics_app.test_client()

    def read() -> dict[str, float]:
        """Every sample of /metrics by name and labels, as in PERMANENT."""
        response = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
        assert response.status_code == 200
        samples = {}
        for family in text_string_to_metric_families(response.get_data(as_text=True)):
            for sample in family.samples:
                labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
                samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
        return samples

    yield read
    with metrics_app.app_context():
        db.engine.dispose()


def wait_for_metric(scrape, name: str, at_least: float, timeout: float = 30) -> dict[str, float]:
    """Scrape until ``name`` reaches ``at_least``: workers write their figures every few seconds."""
    deadline = time.monotonic() + timeout
    while True:
        samples = scrape()
        if samples.get(name, 0) >= at_least:
            return samples
        if time.monotonic() > deadline:
            raise AssertionError(f"{name} stayed at {samples.get(name)}, expected at least {at_least}")
        time.sleep(0.5)


def _send_confirmations(*emails: str) -> None:
    ids = []
    for email in emails:
        ids += subscribe(db.session, SubscriptionRequest(email, ["marvel-news"]), "weekly").delivery_ids
    db.session.commit()
    publish_deliveries(ids)


def _states() -> set[DeliveryState]:
    db.session.rollback()
    return set(db.session.scalars(select(Delivery.state)))


def test_the_histogram_and_counters_are_exposed_in_full(scrape):
    samples = scrape()
    assert samples[COUNT] == samples[ALL]
    assert SUM in samples
    assert "newsletter_smtp_send_seconds_bucket{le=0.005}" in samples
    for kind in ("temporary", "permanent", "connection"):
        assert f"newsletter_smtp_errors_total{{kind={kind}}}" in samples


def test_mail_the_worker_sends_shows_in_the_latency_histogram(app, scrape, smtp, worker):
    before = scrape()
    with app.app_context():
        _send_confirmations("peggy@example.com", "bucky@example.com")
    smtp.wait_for("peggy@example.com")
    smtp.wait_for("bucky@example.com")
    after = wait_for_metric(scrape, COUNT, before[COUNT] + 2)
    assert after[SUM] > before[SUM]
    assert after[ALL] == after[COUNT]


def test_refusals_show_in_the_error_counters(app, scrape, smtp, worker):
    before = scrape()
    smtp.fail_permanently("gone@example.com")
    smtp.fail_temporarily("full@example.com", times=1)
    with app.app_context():
        _send_confirmations("gone@example.com", "full@example.com")
        smtp.wait_for("full@example.com")  # delivered on its second attempt
        # It arrives before the worker records it: wait for the ledger, not only for the refusal.
        deadline = time.monotonic() + 20
        while _states() != {DeliveryState.FAILED, DeliveryState.SENT} and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _states() == {DeliveryState.FAILED, DeliveryState.SENT}
    wait_for_metric(scrape, PERMANENT, before[PERMANENT] + 1)
    wait_for_metric(scrape, TEMPORARY, before[TEMPORARY] + 1)
    # Three attempts in all: the refused one, and the deferred one twice.
    wait_for_metric(scrape, COUNT, before[COUNT] + 3)


def test_the_redis_store_adds_up_in_one_hash_per_metric():
    client = redis.Redis.from_url(TEST_REDIS_URL)
    prefix = f"test:{uuid.uuid4().hex}:"
    store = RedisMetricsStore(client, prefix)
    try:
        store.add({"latency": {"0.01": 2, "sum": 0.5}, "errors": {"permanent": 1}})
        store.add({"latency": {"0.01": 1, "sum": 0.25}})
        assert store.read(["latency", "errors", "nothing"]) == {
            "latency": {"0.01": 3.0, "sum": 0.75}, "errors": {"permanent": 1.0}, "nothing": {}}
    finally:
        client.delete(*(prefix + name for name in ("latency", "errors")))
