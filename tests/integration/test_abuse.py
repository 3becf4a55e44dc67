"""The public form under attack: rate limits, bots, foreign origins, probing, and
what browsers are told to protect."""

import logging
import re
import time

import pytest
from sqlalchemy import func, select

from service.extensions import db
from service.models import Delivery, Subscriber
from service.subscriptions import SubscriptionRequest, confirm_subscription, subscribe, unsubscribe
from service.suppressions import suppress

FORM = {"email": "peggy@example.com", "topics": "marvel-news"}


@pytest.fixture(autouse=True)
def _app_context(app):
    """Assertions read the database through the app's session."""
    with app.app_context():
        yield


def _count(model) -> int:
    db.session.rollback()
    return db.session.scalar(select(func.count()).select_from(model))


@pytest.fixture
def strict(stack, app):
    """An app with low limits, as production would have."""
    def make(**limits):
        strict_app = stack.make_app(**{"SUBSCRIBE_LIMIT_PER_IP": "1000/minute",
                                       "SUBSCRIBE_LIMIT_PER_ADDRESS": "1000/minute",
                                       "SUBSCRIBE_LIMIT_PER_DOMAIN": "1000/minute", **limits})
        strict_app.extensions["subscribe_limits"].reset()
        return strict_app.test_client()
    return make


def test_too_many_posts_from_one_ip_get_429_with_retry_after(strict):
    client = strict(SUBSCRIBE_LIMIT_PER_IP="3/minute")
    answers = [client.post("/subscribe", data={**FORM, "email": f"r{n}@example.com"}) for n in range(4)]
    assert [a.status_code for a in answers] == [200, 200, 200, 429]
    assert 0 < int(answers[-1].headers["Retry-After"]) <= 60
    assert "Too many" in answers[-1].get_data(as_text=True)
    other_ip = client.post("/subscribe", data={**FORM, "email": "x@example.com"},
                           environ_base={"REMOTE_ADDR": "192.0.2.9"})
    assert other_ip.status_code == 200


def test_one_target_address_is_limited_whatever_the_ip(strict):
    client = strict(SUBSCRIBE_LIMIT_PER_ADDRESS="2/hour")
    answers = [client.post("/subscribe", data={**FORM, "email": " PEGGY@example.com "},
                           environ_base={"REMOTE_ADDR": f"192.0.2.{n}"}) for n in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 429]
    as_json = client.post("/subscribe", json={**FORM, "topics": ["marvel-news"]},
                          environ_base={"REMOTE_ADDR": "192.0.2.77"})
    assert as_json.status_code == 429
    assert as_json.json["retry_after"] > 0


def test_one_target_domain_is_limited(strict):
    client = strict(SUBSCRIBE_LIMIT_PER_DOMAIN="2/hour")
    codes = [client.post("/subscribe", data={**FORM, "email": f"victim{n}@small-company.example"},
                         environ_base={"REMOTE_ADDR": f"198.51.100.{n}"}).status_code for n in range(3)]
    assert codes == [200, 200, 429]
    assert client.post("/subscribe", data={**FORM, "email": "someone@example.org"}).status_code == 200


def test_behind_a_proxy_the_client_ip_comes_from_the_trusted_hops_only(strict):
    client = strict(SUBSCRIBE_LIMIT_PER_IP="1/minute", TRUSTED_PROXY_HOPS="1")
    first = client.post("/subscribe", data=FORM, headers={"X-Forwarded-For": "203.0.113.1"})
    second = client.post("/subscribe", data={**FORM, "email": "b@example.com"},
                         headers={"X-Forwarded-For": "203.0.113.2"})
    # A client cannot escape its limit by prepending addresses of its own.
    spoofed = client.post("/subscribe", data={**FORM, "email": "c@example.com"},
                          headers={"X-Forwarded-For": "10.9.9.9, 203.0.113.1"})
    assert (first.status_code, second.status_code, spoofed.status_code) == (200, 200, 429)


def test_at_most_three_confirmation_emails_while_pending(stack, app):
    frequent = stack.make_app(CONFIRMATION_RESEND_SECONDS="1")
    client = frequent.test_client()
    for _ in range(5):
        client.post("/subscribe", data=FORM)
        db.session.execute(db.update(Subscriber).values(confirmation_requested_at=None))
        db.session.commit()
    assert _count(Delivery) == 3


def test_a_filled_honeypot_gets_the_normal_answer_and_stores_nothing(client):
    normal = client.post("/subscribe", data={**FORM, "email": "human@example.com"})
    bot = client.post("/subscribe", data={**FORM, "website": "http://spam.example"})
    assert bot.status_code == normal.status_code == 200
    assert bot.get_data() == normal.get_data()
    assert _count(Subscriber) == 1


def test_the_hosted_form_carries_a_hidden_honeypot_and_a_fill_time(client):
    html = client.get("/subscribe").get_data(as_text=True)
    assert re.search(r'<div class="hp" aria-hidden="true">', html)
    assert 'name="website"' in html and 'tabindex="-1"' in html
    assert re.search(r'name="form_ts" value="[^"]+"', html)


def test_a_form_sent_back_faster_than_a_person_types_is_dropped(stack, app):
    # The signed time is in whole seconds, so a form signed late in a second looks up to a
    # second older than it is: with a 2 s minimum, a post within a second is always too fast.
    patient = stack.make_app(FORM_MIN_FILL_SECONDS="2")
    client = patient.test_client()
    hosted_form = client.get("/subscribe").get_data(as_text=True)
    form_time = re.search(r'name="form_ts" value="([^"]+)"', hosted_form)[1]
    assert client.post("/subscribe", data={**FORM, "form_ts": form_time}).status_code == 200
    assert _count(Subscriber) == 0
    time.sleep(2.1)  # the reader takes their time
    assert client.post("/subscribe", data={**FORM, "form_ts": form_time}).status_code == 200
    assert _count(Subscriber) == 1
    forged = client.post("/subscribe", data={**FORM, "email": "f@example.com", "form_ts": "1.abc.def"})
    assert forged.status_code == 200
    assert _count(Subscriber) == 1


def test_the_answer_is_identical_for_new_pending_confirmed_unsubscribed_and_suppressed(app, client):
    with app.app_context():
        for email in ("pending@example.com", "confirmed@example.com", "left@example.com"):
            subscribe(db.session, SubscriptionRequest(email, ["marvel-news"]), "weekly")
        db.session.commit()
        ids = dict(db.session.execute(select(Subscriber.email, Subscriber.id)).all())
        confirm_subscription(db.session, ids["confirmed@example.com"], 1)
        confirm_subscription(db.session, ids["left@example.com"], 1)
        unsubscribe(db.session, ids["left@example.com"])
        suppress(db.session, "bounced@example.com", "hard_bounce")
        db.session.commit()
    addresses = ["new@example.com", "pending@example.com", "confirmed@example.com", "left@example.com",
                 "bounced@example.com"]
    for send in (lambda e: client.post("/subscribe", data={**FORM, "email": e}),
                 lambda e: client.post("/subscribe", json={**FORM, "email": e, "topics": ["marvel-news"]})):
        answers = [send(email) for email in addresses]
        assert len({a.status_code for a in answers}) == 1
        assert len({a.get_data() for a in answers}) == 1
        assert len({tuple(sorted(a.headers.items())) for a in answers}) == 1


@pytest.mark.parametrize("header", ["Origin", "Referer"])
def test_a_form_post_from_a_foreign_origin_is_refused(stack, app, header):
    client = stack.make_app(PUBLISHER_ORIGINS="https://www.publisher.example").test_client()
    foreign = "https://evil.example" + ("/page" if header == "Referer" else "")
    refused = client.post("/subscribe", data=FORM, headers={header: foreign})
    assert refused.status_code == 403
    assert "publisher" in refused.get_data(as_text=True)
    assert _count(Subscriber) == 0
    own = "https://www.publisher.example" + ("/article/7" if header == "Referer" else "")
    assert client.post("/subscribe", data=FORM, headers={header: own}).status_code == 200
    assert client.post("/subscribe", data=FORM, headers={header: "http://localhost"}).status_code == 200


def test_cors_lets_only_publisher_origins_use_the_json_form(stack, app):
    client = stack.make_app(PUBLISHER_ORIGINS="https://www.publisher.example").test_client()
    preflight = client.options("/subscribe", headers={
        "Origin": "https://www.publisher.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "Content-Type"})
    assert preflight.headers["Access-Control-Allow-Origin"] == "https://www.publisher.example"
    stranger = client.options("/subscribe", headers={
        "Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
    assert "Access-Control-Allow-Origin" not in stranger.headers


def test_pages_carry_security_headers(client):
    page = client.get("/subscribe")
    policy = page.headers["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy.split("style-src")[0]
    assert "frame-ancestors 'none'" in policy
    assert page.headers["X-Content-Type-Options"] == "nosniff"
    assert page.headers["X-Frame-Options"] == "DENY"
    assert page.headers["Referrer-Policy"] == "no-referrer"
    assert "<script>" not in page.get_data(as_text=True)  # no inline script for the policy to allow
    assert client.get("/healthz").headers["Referrer-Policy"] == "no-referrer"


def test_no_address_or_ip_reaches_the_logs_at_info_level(client, smtp, worker, caplog):
    caplog.set_level(logging.INFO)
    client.post("/subscribe", data={**FORM, "email": "private.person@example.com"},
                environ_base={"REMOTE_ADDR": "198.51.100.23"})
    smtp.wait_for("private.person@example.com")
    # aiosmtpd ("mail.log") stands in for the recipient's server; its logs are not ours.
    ours = [r.getMessage() for r in caplog.records if not r.name.startswith("mail.log")]
    logged = "\n".join(ours) + worker.log()
    assert "private.person" not in logged
    assert "198.51.100.23" not in logged
