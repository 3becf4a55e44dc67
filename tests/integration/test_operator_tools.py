"""Operators see the ledger's counts and retry what failed, through the API and the CLI."""

import pytest

from service.config import get_settings
from service.deliveries import deliver
from service.extensions import db
from service.mail.transport import transport_for
from service.models import Delivery, DeliveryState
from service.subscriptions import SubscriptionRequest, subscribe
from tests.conftest import wait_until

TOKEN = "admin-token-for-tests-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def ops_app(stack, app):
    admin_app = stack.make_app(ADMIN_API_TOKEN=TOKEN)
    with admin_app.app_context():
        yield admin_app


def _confirmations(emails) -> list[int]:
    ids = []
    for email in emails:
        ids += subscribe(db.session, SubscriptionRequest(email, ["marvel-news"]), "weekly").delivery_ids
    db.session.commit()
    return ids


def _send_all(ids):
    settings = get_settings()
    transport = transport_for(settings, db.session)
    try:
        for delivery_id in ids:
            deliver(db.session, delivery_id, transport, settings)
    finally:
        transport.close()


def test_counts_by_state_per_stream_from_the_api_and_the_cli(ops_app, smtp):
    smtp.fail_permanently("bad@example.com")
    ids = _confirmations(["a@example.com", "b@example.com", "bad@example.com", "later@example.com"])
    _send_all(ids[:3])
    response = ops_app.test_client().get("/api/v1/deliveries/stats", headers=AUTH)
    assert response.status_code == 200
    [stream] = response.json["streams"]
    assert stream["kind"] == "confirmation"
    assert stream["counts"] == {"queued": 1, "sending": 0, "sent": 2, "deferred": 0, "failed": 1,
                                     "suppressed": 0, "bounced": 0}
    assert stream["total"] == 4
    output = ops_app.test_cli_runner().invoke(args=["deliveries", "stats"]).output
    assert "confirmation" in output and "failed" in output
    line = next(line for line in output.splitlines() if line.startswith("confirmation"))
    assert line.split()[1:] == ["1", "0", "2", "0", "1", "0", "0", "4"]


def test_failed_deliveries_can_be_retried_and_then_go_out(ops_app, smtp):
    smtp.fail_permanently("bad@example.com")
    [delivery_id] = _confirmations(["bad@example.com"])
    _send_all([delivery_id])
    assert db.session.get(Delivery, delivery_id).state == DeliveryState.FAILED
    smtp.reset()  # the mailbox exists again
    response = ops_app.test_client().post("/api/v1/deliveries/retry", headers=AUTH,
                                          json={"kind": "confirmation"})
    assert response.json["retried"] == 1
    db.session.rollback()
    delivery = db.session.get(Delivery, delivery_id)
    assert (delivery.state, delivery.attempts) == (DeliveryState.QUEUED, 0)
    _send_all([delivery_id])
    smtp.wait_for("bad@example.com")


def test_the_cli_retries_failed_deliveries_and_they_go_out(ops_app, smtp, worker):
    # With a worker running (as in production, and as whichever test started it leaves it), the
    # retried delivery is sent at once: the test follows it there rather than race it in QUEUED.
    smtp.fail_permanently("bad@example.com")
    ids = _confirmations(["bad@example.com"])
    _send_all(ids)
    assert db.session.get(Delivery, ids[0]).state == DeliveryState.FAILED
    smtp.reset()  # the mailbox exists again
    result = ops_app.test_cli_runner().invoke(args=["deliveries", "retry-failed"])
    assert "queued 1 failed deliveries again (1 published now)" in result.output
    smtp.wait_for("bad@example.com")
    wait_until(lambda: db.session.get(Delivery, ids[0]).state == DeliveryState.SENT,
               message="the retried delivery recorded as sent")
    assert db.session.get(Delivery, ids[0]).attempts == 1  # the retry started from fresh attempts


def test_stats_and_retry_need_the_admin_token(ops_app):
    client = ops_app.test_client()
    assert client.get("/api/v1/deliveries/stats").status_code == 401
    assert client.post("/api/v1/deliveries/retry").status_code == 401
    assert client.get("/api/v1/deliveries/stats?kind=nope", headers=AUTH).status_code == 422
