"""The admin overview page: behind the admin token (bearer, or HTTP Basic for browsers), and
showing the figures of a database set up through the service's own functions."""

from __future__ import annotations

import base64
import re
from datetime import timedelta

import pytest
from sqlalchemy import select

from service.api_keys import create_api_key
from service.articles import ArticleInput, ingest_articles
from service.bounce_reports import BounceReport
from service.bounces import record_bounce
from service.config import get_settings
from service.deliveries import deliver
from service.digests import DigestFilter, plan_digests
from service.extensions import db
from service.mail.transport import OutboxTransport
from service.models import BounceKind, Delivery, DeliveryKind, DeliveryState, Subscriber, utcnow
from service.overview import build_overview
from service.subscriptions import SubscriptionRequest, confirm_subscription, subscribe, unsubscribe
from service.topics import TopicChanges, create_topic

pytestmark = pytest.mark.integration

TOKEN = "admin-token-for-tests-0123456789"
PATH = "/admin/overview"
EVIL_NAME = '<script>alert("topic")</script> & <b>Co</b>'


def basic(user: str, password: str) -> dict[str, str]:
    credentials = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {credentials}"}


BEARER = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def admin_app(stack):
    admin_app = stack.make_app(ADMIN_API_TOKEN=TOKEN)
    yield admin_app
    with admin_app.app_context():
        db.engine.dispose()


@pytest.fixture
def admin(admin_app, app):
    """A client of an app with ADMIN_API_TOKEN set, on the stack's (emptied) database."""
    return admin_app.test_client()


# ------------------------------------------------------------------ access


def test_without_credentials_the_browser_is_asked_for_them(admin):
    response = admin.get(PATH)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith('Basic realm="newsletter admin"')
    assert response.mimetype == "text/html"
    assert "Marvel News" not in response.get_data(as_text=True)


@pytest.mark.parametrize("headers", [
    {"Authorization": "Bearer wrong-token"},
    basic("admin", "wrong-token"),
    basic(TOKEN, ""),  # the token as the user name is no password
    {"Authorization": "Basic not-base64!"},
    {"Authorization": f"Token {TOKEN}"},
], ids=["bearer", "basic", "token-as-user", "malformed", "other-scheme"])
def test_wrong_credentials_are_refused(admin, headers):
    response = admin.get(PATH, headers=headers)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Basic ")
    assert "Marvel News" not in response.get_data(as_text=True)


def test_json_clients_get_a_json_refusal(admin):
    response = admin.get(PATH, headers={"Accept": "application/json"})
    assert response.status_code == 401
    assert set(response.json) == {"error"}


def test_the_admin_token_opens_it_as_a_bearer_token_or_as_a_basic_password(admin):
    for headers in (BEARER, basic("anyone", TOKEN), basic("", TOKEN)):
        response = admin.get(PATH, headers=headers)
        assert response.status_code == 200, headers
        assert response.mimetype == "text/html"
        assert response.headers["Cache-Control"] == "no-store"
        assert "Marvel News" in response.get_data(as_text=True)


def test_a_named_api_key_opens_it_and_a_revoked_one_does_not(admin, admin_app):
    with admin_app.app_context():
        _, key = create_api_key(db.session, "grafana")
        db.session.commit()
    assert admin.get(PATH, headers=basic("ops", key)).status_code == 200
    assert admin.get(PATH, headers={"Authorization": f"Bearer {key}"}).status_code == 200


def test_with_no_admin_token_configured_nothing_opens_it(stack, app):
    closed = stack.make_app()
    try:
        client = closed.test_client()
        assert client.get(PATH).status_code == 401
        assert client.get(PATH, headers=basic("admin", "")).status_code == 401
    finally:
        with closed.app_context():
            db.engine.dispose()


def test_the_page_keeps_to_the_content_security_policy(admin):
    response = admin.get(PATH, headers=BEARER)
    policy = response.headers["Content-Security-Policy"]
    assert "style-src 'self';" in policy and "unsafe-inline" not in policy
    page = response.get_data(as_text=True).lower()
    assert "<script" not in page and "style=" not in page and "<style" not in page
    assert 'rel="stylesheet" href="/static/admin.css"' in page
    assert admin.get("/static/admin.css").status_code == 200
    assert "<svg" in page


# ------------------------------------------------------------------ the figures


@pytest.fixture
def newsroom(session):
    """Four readers of Marvel News (two confirmed, one pending, one who left), one of whom
    also reads a topic with HTML in its name; a digest run; one of its digests bounced."""
    create_topic(session, "evil-news", TopicChanges(name=EVIL_NAME, tags=["evil"]))
    session.commit()

    def reader(email, topics, confirm=True):
        outcome = subscribe(session, SubscriptionRequest(email, topics), "weekly")
        if confirm:
            confirm_subscription(session, outcome.subscriber_id, 1)
        session.commit()
        return outcome.subscriber_id

    peggy = reader("peggy@example.com", ["marvel-news", "evil-news"])
    reader("steve@example.com", ["marvel-news"])
    reader("tony@example.com", ["marvel-news"], confirm=False)
    bucky = reader("bucky@example.com", ["marvel-news"])
    unsubscribe(session, bucky)
    session.commit()

    published = utcnow()
    ingest_articles(session, [
        ArticleInput(title="Atwell on set", url="https://news.example.com/atwell", published_at=published,
                     tags=["marvel"]),
        ArticleInput(title="Evil rises", url="https://news.example.com/evil", published_at=published,
                     tags=["evil"]),
    ])
    session.commit()
    settings = get_settings()
    [batch] = plan_digests(session, settings, published + timedelta(minutes=1), force=True,
                           only=DigestFilter())
    assert len(batch.delivery_ids) == 2  # peggy and steve

    peggys = session.scalars(select(Delivery).where(
        Delivery.kind == DeliveryKind.DIGEST, Delivery.subscriber_id == peggy)).one()
    assert deliver(session, peggys.id, OutboxTransport(session), settings).state == DeliveryState.SENT
    session.commit()
    session.refresh(peggys)
    bounce = record_bounce(session, settings, BounceReport(
        kind=BounceKind.HARD, status="5.1.1", original_message_id=peggys.message_id,
        diagnostic="550 5.1.1 <peggy@example.com>: no such user <b>here</b>"))
    assert bounce is not None
    session.commit()
    assert session.get(Delivery, peggys.id).state == DeliveryState.BOUNCED
    return batch.period


def test_the_overview_counts_readers_topics_digests_and_bounces(session, newsroom):
    overview = build_overview(session)
    assert overview.readers == {"pending": 1, "confirmed": 2, "unsubscribed": 1}
    topics = {topic.slug: topic for topic in overview.topics}
    marvel = topics["marvel-news"]
    assert marvel.subscriptions == {"pending": 1, "confirmed": 2, "unsubscribed": 1}
    assert marvel.ever_confirmed == 3  # bucky confirmed before leaving
    assert marvel.confirmation_rate == 0.75
    assert topics["evil-news"].confirmation_rate == 1.0
    assert topics["tv-news"].requested == 0 and topics["tv-news"].confirmation_rate is None

    [run] = overview.digest_runs
    assert run.period == newsroom
    assert run.total == 2
    assert run.counts["queued"] == 1 and run.counts["bounced"] == 1
    [marvel_run] = marvel.digest_runs
    assert (marvel_run.period, marvel_run.total, marvel_run.counts["bounced"]) == (newsroom, 2, 1)
    [evil_run] = topics["evil-news"].digest_runs
    assert (evil_run.total, evil_run.counts["bounced"]) == (1, 1)
    assert topics["tv-news"].digest_runs == []

    assert overview.confirmations["queued"] == 4
    assert overview.bounces_by_kind == {"hard": 1, "soft": 0, "complaint": 0, "policy": 0}
    [bounce] = overview.recent_bounces
    assert (bounce.kind, bounce.status, bounce.delivery_kind, bounce.period) == ("hard", "5.1.1", "digest",
                                                                                newsroom)
    assert "peggy@example.com" not in bounce.diagnostic


def _row(page: str, attribute: str, value: str) -> str:
    match = re.search(rf'<tr {attribute}="{re.escape(value)}">(.*?)</tr>', page, re.S)
    assert match, f"no row {attribute}={value}"
    return match.group(1)


def _cells(row: str) -> dict[str, int]:
    return {state: int(count) for state, count in re.findall(r'data-state="(\w+)">(\d+)<', row)}


def test_the_page_shows_the_same_figures(admin, newsroom):
    page = admin.get(PATH, headers=BEARER).get_data(as_text=True)

    marvel = _row(page, "data-topic", "marvel-news")
    assert _cells(marvel) == {"pending": 1, "confirmed": 2, "unsubscribed": 1}
    assert 'data-rate="75"' in marvel
    assert 'data-rate="100"' in _row(page, "data-topic", "evil-news")
    assert 'data-rate="none"' in _row(page, "data-topic", "tv-news")
    assert 'aria-label="Marvel News: pending 1, confirmed 2, unsubscribed 1"' in marvel

    run = _cells(_row(page, "data-period", newsroom))
    assert run == {"queued": 1, "sending": 0, "sent": 0, "deferred": 0, "failed": 0, "suppressed": 0,
                   "bounced": 1, "total": 2}
    topic_runs = re.search(r'<details data-topic-runs="evil-news">(.*?)</details>', page, re.S).group(1)
    assert _cells(_row(topic_runs, "data-period", newsroom))["bounced"] == 1

    assert re.search(r'<tr data-bounce-kind="hard">.*?<td class="num">1</td>', page, re.S)
    assert "5.1.1" in page
    assert "peggy@example.com" not in page
    for reader_status, count in {"pending": 1, "confirmed": 2, "unsubscribed": 1}.items():
        assert f'data-reader-status="{reader_status}">{count}<' in page


def test_names_and_diagnostics_are_escaped(admin, newsroom):
    page = admin.get(PATH, headers=BEARER).get_data(as_text=True)
    assert "&lt;script&gt;alert(&#34;topic&#34;)&lt;/script&gt; &amp; &lt;b&gt;Co&lt;/b&gt;" in page
    assert "<script" not in page and "<b>" not in page
    assert "no such user &lt;b&gt;here&lt;/b&gt;" in page


def test_an_empty_service_still_renders(admin, session):
    session.execute(db.delete(Subscriber))
    session.commit()
    response = admin.get(PATH, headers=BEARER)
    assert response.status_code == 200
    page = response.get_data(as_text=True)
    assert "No digest planned yet." in page
    assert "None recorded." in page
