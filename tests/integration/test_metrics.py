"""Prometheus metrics counted from the ledger, behind a token."""

from service.extensions import db
from service.subscriptions import SubscriptionRequest, confirm_subscription, subscribe

TOKEN = "metrics-token-for-tests-0123456789"


def test_metrics_count_readers_subscriptions_and_deliveries(stack, app):
    with app.app_context():
        subscribe(db.session, SubscriptionRequest("a@example.com", ["marvel-news", "tv-news"]), "weekly")
        outcome = subscribe(db.session, SubscriptionRequest("b@example.com", ["marvel-news"]), "weekly")
        confirm_subscription(db.session, outcome.subscriber_id, 1)
        db.session.commit()
    client = stack.make_app(METRICS_TOKEN=TOKEN).test_client()
    response = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200
    assert response.mimetype == "text/plain"
    text = response.get_data(as_text=True)
    assert 'newsletter_subscribers{status="pending"} 1.0' in text
    assert 'newsletter_subscribers{status="confirmed"} 1.0' in text
    assert 'newsletter_subscriptions{status="confirmed",topic="marvel-news"} 1.0' in text
    assert 'newsletter_deliveries{kind="confirmation",state="queued"} 2.0' in text
    if stack.name == "postgres":
        assert "newsletter_queue_depth" in text  # the Redis broker's queue


def test_metrics_need_a_token(stack, app):
    with_token = stack.make_app(METRICS_TOKEN=TOKEN).test_client()
    assert with_token.get("/metrics").status_code == 401
    assert with_token.get("/metrics", headers={"Authorization": "Bearer nope"}).status_code == 401
    admin_only = stack.make_app(ADMIN_API_TOKEN="admin-token-0123456789").test_client()
    assert admin_only.get("/metrics").status_code == 401
    assert admin_only.get("/metrics", headers={"Authorization": "Bearer admin-token-0123456789"}
                          ).status_code == 200
