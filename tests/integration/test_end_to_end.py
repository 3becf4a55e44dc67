"""A reader's whole journey with a real Celery worker process and a real SMTP server.

Runs on PostgreSQL + Redis and on the embedded SQLite default. Each test reads
the messages that actually arrived and follows their links.
"""

from urllib.parse import urlsplit

import pytest
from sqlalchemy import select

from service.extensions import db
from service.models import Delivery, DeliveryState, Subscriber, SubscriberStatus, SubscriptionStatus
from tasks.delivery import publish_deliveries
from tests.conftest import PUBLIC_BASE_URL, wait_until
from tests.forms import submit

pytestmark = pytest.mark.integration
EMAIL = "peggy@example.com"
FORM = {"email": EMAIL, "topics": "marvel-news", "name": "Peggy"}


@pytest.fixture(autouse=True)
def _app_context(app):
    with app.app_context():
        yield


def _path(url: str) -> str:
    assert url.startswith(PUBLIC_BASE_URL), url
    return urlsplit(url).path


def _subscriber() -> Subscriber:
    db.session.rollback()
    return db.session.scalars(select(Subscriber).where(Subscriber.email == EMAIL)).one()


def _delivery() -> Delivery:
    db.session.rollback()
    return db.session.scalars(select(Delivery)).one()


def test_subscribe_confirm_and_unsubscribe_through_the_mail_that_arrived(client, smtp, worker):
    assert client.post("/subscribe", data=FORM).status_code == 200

    [mail] = smtp.wait_for(EMAIL)
    message = mail.message
    assert message["To"] == EMAIL
    assert message["Subject"] == "Confirm your subscription to Marvel News"
    assert message["Message-ID"].startswith("<") and message["Message-ID"].endswith("@example.com>")
    assert message["Date"]
    assert message["Auto-Submitted"] == "auto-generated"
    assert message.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in message.iter_parts()] == ["text/plain", "text/html"]
    assert b"Content-Transfer-Encoding: quoted-printable" in mail.raw
    assert "Hi Peggy" in mail.text
    assert 'style="' in mail.html  # CSS inlined for clients that drop <style>

    confirm_path = _path(mail.link("confirm"))
    assert confirm_path in mail.html
    assert client.get(confirm_path).status_code == 200
    assert _subscriber().status == SubscriberStatus.PENDING  # a GET changes nothing
    assert submit(client, confirm_path).status_code == 200
    subscriber = _subscriber()
    assert subscriber.status == SubscriberStatus.CONFIRMED
    assert [s.status for s in subscriber.subscriptions] == [SubscriptionStatus.CONFIRMED]

    # RFC 8058: what a mailbox provider does with the List-Unsubscribe header.
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    unsubscribe_url = message["List-Unsubscribe"].strip("<>")
    response = client.post(_path(unsubscribe_url), data="List-Unsubscribe=One-Click",
                           content_type="application/x-www-form-urlencoded")
    assert response.status_code == 200
    assert _subscriber().status == SubscriberStatus.UNSUBSCRIBED

    # The footer's preferences link works too.
    assert client.get(_path(mail.link("preferences"))).status_code == 200


def test_an_address_at_an_international_domain_gets_its_confirmation(client, smtp, worker):
    # Stored as typed, it failed to compose (a non-ASCII To header) and the reader never heard from us.
    response = client.post("/subscribe", data={**FORM, "email": "Sharon@Bücher.example"})
    assert response.status_code == 200
    [mail] = smtp.wait_for("sharon@xn--bcher-kva.example")
    assert mail.message["To"] == "sharon@xn--bcher-kva.example"
    assert submit(client, _path(mail.link("confirm"))).status_code == 200
    db.session.rollback()
    stored = db.session.scalars(select(Subscriber).where(Subscriber.email.like("sharon@%"))).one()
    assert (stored.email, stored.status) == ("sharon@xn--bcher-kva.example", SubscriberStatus.CONFIRMED)


def test_an_address_that_needs_smtputf8_is_refused_at_the_form(client, smtp):
    response = client.post("/subscribe", data={**FORM, "email": "jürgen@example.com"},
                           headers={"Accept": "application/json"})
    assert response.status_code == 422
    assert "before the @-sign" in response.json["errors"]["email"]
    db.session.rollback()
    assert db.session.scalars(select(Subscriber)).all() == []


def test_coming_back_sends_a_new_link_and_the_old_one_stays_dead(client, smtp, worker):
    client.post("/subscribe", data=FORM)
    [first] = smtp.wait_for(EMAIL)
    client.post(_path(first.link("unsubscribe")))
    client.post("/subscribe", data=FORM)
    second = smtp.wait_for(EMAIL, count=2)[1]
    assert submit(client, _path(first.link("confirm"))).status_code == 400
    assert submit(client, _path(second.link("confirm"))).status_code == 200
    assert _subscriber().status == SubscriberStatus.CONFIRMED


def test_a_broker_that_is_down_loses_no_subscription(stack, smtp, worker):
    broken = stack.make_app(CELERY_BROKER_URL="redis://127.0.0.1:1/0")
    response = broken.test_client().post("/subscribe", data=FORM)
    assert response.status_code == 200
    assert "Check your inbox" in response.get_data(as_text=True)
    assert _subscriber().status == SubscriberStatus.PENDING
    assert _delivery().state == DeliveryState.QUEUED

    # Once the broker answers again, the sweep (run by beat) publishes the lost task.
    wait_until(lambda: _delivery().next_attempt_at is not None, message="delivery row")
    runner = stack.app.test_cli_runner()
    result = wait_until(lambda: "published 1" in (r := runner.invoke(args=["sweep"])).output and r,
                        timeout=10, interval=0.5, message="the sweep to find the stalled delivery")
    assert result.exit_code == 0
    [mail] = smtp.wait_for(EMAIL)
    assert "/confirm/" in mail.text
    wait_until(lambda: _delivery().state == DeliveryState.SENT, message="delivery marked sent")


def test_a_temporary_smtp_refusal_is_retried_until_the_mail_arrives(client, smtp, worker):
    smtp.fail_temporarily(EMAIL, times=2)
    client.post("/subscribe", data=FORM)
    smtp.wait_for(EMAIL, timeout=30)
    assert smtp.attempts(EMAIL) == 3
    delivery = wait_until(lambda: (d := _delivery()).state == DeliveryState.SENT and d)
    assert delivery.attempts == 3


def test_an_smtp_server_that_is_down_gets_the_mail_once_it_is_back(client, smtp, worker):
    with smtp.down():
        client.post("/subscribe", data=FORM)
        wait_until(lambda: _delivery().state == DeliveryState.DEFERRED, message="a deferred delivery")
        assert _delivery().last_error.startswith("connection problem")
    smtp.wait_for(EMAIL, timeout=40)
    wait_until(lambda: _delivery().state == DeliveryState.SENT, message="delivery marked sent")


def test_a_permanent_smtp_refusal_is_recorded_and_not_retried(client, smtp, worker):
    smtp.fail_permanently(EMAIL)
    client.post("/subscribe", data=FORM)
    delivery = wait_until(lambda: (d := _delivery()).state == DeliveryState.FAILED and d)
    assert delivery.attempts == 1
    assert _subscriber().last_delivery_error.startswith("550")
    assert smtp.attempts(EMAIL) == 1


def test_a_task_published_twice_sends_one_email(client, smtp, worker):
    client.post("/subscribe", data=FORM)
    delivery_id = _delivery().id
    publish_deliveries([delivery_id, delivery_id, delivery_id])
    smtp.wait_for(EMAIL)
    wait_until(lambda: _delivery().state == DeliveryState.SENT)
    # Give the duplicate tasks time to run; they must find the row already sent.
    marker = "peggy-done@example.com"
    client.post("/subscribe", data={"email": marker, "topics": "tv-news"})
    smtp.wait_for(marker)
    assert len(smtp.messages_to(EMAIL)) == 1


def test_the_request_id_follows_a_subscription_into_the_worker(client, smtp, worker):
    response = client.post("/subscribe", data=FORM, headers={"X-Request-ID": "req-peggy-2026"})
    assert response.headers["X-Request-ID"] == "req-peggy-2026"
    smtp.wait_for(EMAIL)
    wait_until(lambda: "req-peggy-2026" in worker.log(), timeout=10, message="the id in the worker's log")
    line = next(line for line in worker.log().splitlines() if "req-peggy-2026" in line)
    assert "sent" in line or "succeeded" in line
    assert EMAIL not in worker.log()


def test_only_a_sane_request_id_is_echoed(client):
    assert "X-Request-ID" not in client.get("/healthz").headers  # ours stay in the logs
    assert "X-Request-ID" not in client.get("/healthz", headers={"X-Request-ID": "<bad id>"}).headers
    assert client.get("/healthz", headers={"X-Request-ID": "lb-7f3a"}).headers["X-Request-ID"] == "lb-7f3a"
