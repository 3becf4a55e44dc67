"""service.deliveries.deliver against the real SMTP server, without Celery."""

import threading
import time
from datetime import timedelta
from urllib.parse import urlsplit

import pytest
from sqlalchemy import event, func, select

from service.config import get_settings
from service.deliveries import RetryLater, deliver, deliver_many, reschedule_stalled, stalled_delivery_ids
from service.extensions import db
from service.mail.transport import OutboxTransport, SMTPSettings, SMTPTransport, transport_for
from service.models import (
    CapturedEmail,
    Delivery,
    DeliveryState,
    Subscriber,
    SubscriberStatus,
    Suppression,
    SuppressionReason,
    Topic,
    utcnow,
)
from service.pauses import pause_sending, resume_sending
from service.subscriptions import SubscriptionRequest, subscribe, unsubscribe
from service.suppressions import is_suppressed, suppress
from service.verp import delivery_id_from_verp
from tests.forms import submit

EMAIL = "peggy@example.com"


@pytest.fixture
def delivery_id(session) -> int:
    outcome = subscribe(session, SubscriptionRequest(EMAIL, ["marvel-news"], name="Peggy"), "weekly")
    session.commit()
    return outcome.delivery_ids[0]


def _send(session, delivery_id):
    settings = get_settings()
    with SMTPTransport(SMTPSettings(settings.SMTP_HOST, settings.SMTP_PORT)) as transport:
        return deliver(session, delivery_id, transport, settings)


def test_a_queued_confirmation_is_sent_and_recorded(session, smtp, delivery_id):
    result = _send(session, delivery_id)
    assert result.state == DeliveryState.SENT
    delivery = session.get(Delivery, delivery_id)
    assert delivery.attempts == 1
    assert delivery.sent_at is not None
    [received] = smtp.wait_for(EMAIL)
    assert received.message["Message-ID"] == delivery.message_id
    assert received.mail_from == "news@example.com"


def test_a_delivery_is_sent_once_however_often_it_is_run(session, smtp, delivery_id):
    assert _send(session, delivery_id).state == DeliveryState.SENT
    assert _send(session, delivery_id).state is None
    assert len(smtp.messages_to(EMAIL)) == 1


def test_a_delivery_that_another_worker_holds_is_left_alone(session, smtp, delivery_id):
    session.get(Delivery, delivery_id).state = DeliveryState.SENDING
    session.commit()
    assert _send(session, delivery_id).state is None
    assert smtp.messages_to(EMAIL) == []


def test_a_temporary_refusal_defers_the_delivery(session, smtp, delivery_id):
    smtp.fail_temporarily(EMAIL, times=1)
    with pytest.raises(RetryLater) as caught:
        _send(session, delivery_id)
    assert caught.value.countdown > 0
    delivery = session.get(Delivery, delivery_id)
    assert delivery.state == DeliveryState.DEFERRED
    assert delivery.last_error.startswith("451")
    assert delivery.next_attempt_at > utcnow()
    assert _send(session, delivery_id).state == DeliveryState.SENT
    assert session.get(Delivery, delivery_id).attempts == 2


def test_a_permanent_refusal_fails_the_delivery_and_marks_the_subscriber(session, smtp, delivery_id):
    smtp.fail_permanently(EMAIL)
    assert _send(session, delivery_id).state == DeliveryState.FAILED
    delivery = session.get(Delivery, delivery_id)
    assert delivery.attempts == 1
    assert delivery.subscriber.last_delivery_error.startswith("550")
    assert _send(session, delivery_id).state is None  # never retried


def test_attempts_are_capped(session, smtp, delivery_id):
    smtp.fail_temporarily(EMAIL, times=100)
    max_attempts = get_settings().DELIVERY_MAX_ATTEMPTS
    for _ in range(max_attempts - 1):
        with pytest.raises(RetryLater):
            _send(session, delivery_id)
    assert _send(session, delivery_id).state == DeliveryState.FAILED
    delivery = session.get(Delivery, delivery_id)
    assert delivery.attempts == max_attempts
    assert "gave up" in delivery.last_error


def test_an_unreachable_server_is_a_temporary_failure(session, smtp, delivery_id):
    with smtp.down(), pytest.raises(RetryLater):
        _send(session, delivery_id)
    assert session.get(Delivery, delivery_id).last_error.startswith("connection problem")


def test_nothing_is_sent_to_a_reader_who_left_before_the_mail_went_out(session, smtp, delivery_id):
    subscriber_id = session.get(Delivery, delivery_id).subscriber_id
    unsubscribe(session, subscriber_id)
    session.commit()
    assert _send(session, delivery_id).state == DeliveryState.SUPPRESSED
    assert smtp.messages_to(EMAIL) == []


def test_nothing_is_sent_when_the_subscriber_was_deleted(session, smtp, delivery_id):
    session.delete(session.scalars(select(Subscriber)).one())
    session.commit()
    assert _send(session, delivery_id).state == DeliveryState.SUPPRESSED


def test_the_outbox_transport_keeps_the_message_in_the_database(session, delivery_id):
    result = deliver(session, delivery_id, OutboxTransport(session), get_settings())
    assert result.state == DeliveryState.SENT
    captured = session.scalars(select(CapturedEmail)).one()
    assert captured.recipients == EMAIL
    assert captured.subject.startswith("Confirm your subscription")
    assert b"List-Unsubscribe-Post: List-Unsubscribe=One-Click" in captured.raw


def test_a_message_the_outbox_took_survives_a_rollback_of_the_callers_work(session):
    OutboxTransport(session).send("news@example.com", [EMAIL], b"Subject: kept\r\n\r\nbody\r\n",
                                  subject="kept", message_id="<kept@example.com>")
    session.rollback()
    assert session.scalars(select(CapturedEmail.subject)).all() == ["kept"]


def test_transport_for_picks_smtp_when_a_host_is_set(app):
    with app.app_context():
        assert isinstance(transport_for(get_settings(), None), SMTPTransport)


def test_the_sweep_finds_deliveries_whose_task_was_lost(session, delivery_id):
    settings = get_settings()
    assert stalled_delivery_ids(session, settings) == []  # just queued: its task may be on its way
    delivery = session.get(Delivery, delivery_id)
    delivery.next_attempt_at = utcnow() - timedelta(seconds=settings.DELIVERY_STALE_SECONDS + 5)
    session.commit()
    assert reschedule_stalled(session, settings) == [delivery_id]
    # Rescheduled rows are not swept again straight away.
    assert stalled_delivery_ids(session, settings) == []


def test_the_sweep_takes_back_a_delivery_whose_worker_died_mid_send(session, smtp, delivery_id):
    settings = get_settings()
    delivery = session.get(Delivery, delivery_id)
    delivery.state = DeliveryState.SENDING
    delivery.updated_at = utcnow() - timedelta(seconds=settings.DELIVERY_LEASE_SECONDS + 5)
    session.commit()
    assert stalled_delivery_ids(session, settings) == [delivery_id]
    assert _send(session, delivery_id).state == DeliveryState.SENT


def test_nothing_is_sent_to_a_suppressed_address(session, smtp, delivery_id):
    suppress(session, " Peggy@Example.com ", SuppressionReason.HARD_BOUNCE)
    session.commit()
    assert _send(session, delivery_id).state == DeliveryState.SUPPRESSED
    assert session.get(Delivery, delivery_id).last_error == "address suppressed"
    assert smtp.messages_to(EMAIL) == []


def test_the_suppression_list_outlives_the_subscriber_and_keeps_no_address(session, delivery_id):
    suppress(session, EMAIL, SuppressionReason.COMPLAINT)
    session.delete(session.scalars(select(Subscriber)).one())
    session.commit()
    assert is_suppressed(session, EMAIL)
    stored = session.scalars(select(Suppression)).one()
    assert "peggy" not in stored.email_hash and len(stored.email_hash) == 64


def test_a_paused_service_defers_without_spending_attempts_and_sends_after_resume(
        session, smtp, delivery_id):
    pause_sending(session, "relay rejected us: 5.7.1")
    session.commit()
    with pytest.raises(RetryLater):
        _send(session, delivery_id)
    delivery = session.get(Delivery, delivery_id)
    assert (delivery.state, delivery.attempts) == (DeliveryState.DEFERRED, 0)
    assert smtp.messages_to(EMAIL) == []
    assert resume_sending(session) == 1
    session.commit()
    assert _send(session, delivery_id).state == DeliveryState.SENT


def test_with_a_bounce_address_the_envelope_sender_is_a_verp_address(stack, app, smtp):
    verp_app = stack.make_app(BOUNCE_ADDRESS="bounces@example.com")
    with verp_app.app_context():
        outcome = subscribe(db.session, SubscriptionRequest(EMAIL, ["marvel-news"]), "weekly")
        db.session.commit()
        [delivery_id] = outcome.delivery_ids
        _send(db.session, delivery_id)
        [received] = smtp.wait_for(EMAIL)
        settings = get_settings()
        assert delivery_id_from_verp(received.mail_from, "bounces@example.com",
                                     [settings.SECRET_KEY]) == delivery_id
        assert received.message["From"] == "Marvel News <news@example.com>"


def test_a_message_that_cannot_be_built_fails_alone_and_the_rest_of_its_group_goes_out(session, smtp):
    """A row whose address holds a line break (imported data, say: the form refuses it) would
    inject a header; it fails with a reason, and the group's other messages are sent."""
    ids = []
    for email in ("first@example.com", "broken@example.com", "last@example.com"):
        outcome = subscribe(session, SubscriptionRequest(email, ["marvel-news"]), "weekly")
        ids.extend(outcome.delivery_ids)
    session.commit()
    broken = session.scalars(select(Subscriber).where(Subscriber.email == "broken@example.com")).one()
    broken.email = "broken@example.com\r\nBcc: victim@example.com"
    session.commit()
    settings = get_settings()
    with SMTPTransport(SMTPSettings(settings.SMTP_HOST, settings.SMTP_PORT)) as transport:
        batch = deliver_many(session, ids, transport, settings)
    assert [result.state for result in batch.results] == [
        DeliveryState.SENT, DeliveryState.FAILED, DeliveryState.SENT]
    assert session.get(Delivery, ids[1]).last_error == "the message could not be composed"
    smtp.wait_for("first@example.com")
    smtp.wait_for("last@example.com")
    assert smtp.messages_to("victim@example.com") == []


def test_a_group_slower_than_its_lease_renews_it_so_the_sweep_never_takes_it_back(stack, session, smtp):
    """Paced to 2 messages a second, a group of 14 takes about 7 s against a 4 s lease. Its
    unsent rows must never look stalled meanwhile, or a second worker would send them too."""
    ids = []
    for n in range(14):
        ids.extend(subscribe(session, SubscriptionRequest(f"slow{n}@example.com", ["marvel-news"]),
                             "weekly").delivery_ids)
    session.commit()
    slow = stack.make_app(DELIVERY_LEASE_SECONDS="4", SEND_RATE_LIMIT="2", SEND_RATE_BURST="1")
    outcome: list[object] = []

    def send_group() -> None:
        with slow.app_context():
            settings = get_settings()
            transport = transport_for(settings, db.session)
            try:
                outcome.append(deliver_many(db.session, ids, transport, settings))
            except Exception as error:  # reported below
                outcome.append(error)
            finally:
                transport.close()
                db.session.remove()

    sender = threading.Thread(target=send_group)
    sender.start()
    looked_stalled: set[int] = set()
    checks = 0
    with slow.app_context():
        while sender.is_alive():
            states = set(db.session.scalars(select(Delivery.state).where(Delivery.id.in_(ids))))
            if DeliveryState.QUEUED not in states:  # claimed: from now on only a lapsed lease is stalled
                looked_stalled |= set(stalled_delivery_ids(db.session, get_settings())) & set(ids)
                checks += 1
            db.session.rollback()
            time.sleep(0.25)
    sender.join()
    assert checks > 16, "the group finished before its lease could lapse; nothing was tested"
    [batch] = outcome
    assert [result.state for result in batch.results] == [DeliveryState.SENT] * len(ids)
    assert looked_stalled == set()
    assert all(len(smtp.messages_to(f"slow{n}@example.com")) == 1 for n in range(14))


def test_a_group_of_confirmations_loads_its_readers_topics_together_not_reader_by_reader(session, smtp):
    """Each confirmation checks and lists its reader's pending topics; a group's are loaded with
    the group, so the statements a group takes do not grow with its size."""
    settings = get_settings()
    engine = session.get_bind()
    last_statements: list[str] = []

    def statements_to_send(count: int, first: int) -> int:
        ids = []
        for n in range(first, first + count):
            request = SubscriptionRequest(f"reader{n}@example.com", ["marvel-news", "tv-news"])
            ids += subscribe(session, request, "weekly").delivery_ids
        session.commit()
        session.expunge_all()  # as in a worker: nothing of these readers loaded yet
        statements: list[str] = []
        record = lambda conn, cursor, statement, *rest: statements.append(statement)  # noqa: E731
        event.listen(engine, "before_cursor_execute", record)
        try:
            with SMTPTransport(SMTPSettings(settings.SMTP_HOST, settings.SMTP_PORT)) as transport:
                batch = deliver_many(session, ids, transport, settings)
        finally:
            event.remove(engine, "before_cursor_execute", record)
        assert [result.state for result in batch.results] == [DeliveryState.SENT] * count
        last_statements[:] = statements
        return len(statements)

    assert statements_to_send(2, first=0) == statements_to_send(8, first=2)
    topics_alone = [s for s in last_statements if "FROM topics" in s and "JOIN" not in s]
    assert topics_alone == []  # the topics came with the subscriptions, not one by one
    received = smtp.wait_for("reader9@example.com")[0].message.get_body(("plain",)).get_content()
    assert "Marvel News" in received and "TV News" in received


def test_confirmations_of_one_content_carry_each_readers_own_links_and_the_topics_as_they_are(
        session, smtp, client):
    """Confirmations are filled in from a template made once per content and kept across tasks:
    each reader still gets their own name, address and links, and a renamed topic shows at once."""
    settings = get_settings()
    readers = {"first@example.com": "First", "second@example.com": "Second", "third@example.com": "Third"}
    requests = [SubscriptionRequest(email, ["marvel-news"], name=name) for email, name in readers.items()]
    ids = [subscribe(session, request, "weekly").delivery_ids[0] for request in requests]
    session.commit()

    def send(delivery_ids):
        with SMTPTransport(SMTPSettings(settings.SMTP_HOST, settings.SMTP_PORT)) as transport:
            batch = deliver_many(session, delivery_ids, transport, settings)
        assert [result.state for result in batch.results] == [DeliveryState.SENT] * len(delivery_ids)

    send(ids[:2])
    session.scalars(select(Topic).where(Topic.slug == "marvel-news")).one().name = "Marvel Studios News"
    session.commit()
    send(ids[2:])

    topics = {"first@example.com": "Marvel News", "second@example.com": "Marvel News",
              "third@example.com": "Marvel Studios News"}
    for email, name in readers.items():
        [received] = smtp.wait_for(email)
        assert received.message["Subject"] == f"Confirm your subscription to {topics[email]}"
        assert f"Hi {name}," in received.text and email in received.text
        others = [other for other in readers if other != email]
        assert not any(other in received.text or readers[other] in received.html for other in others)
        assert submit(client, urlsplit(received.link("confirm")).path).status_code == 200
        subscriber = session.scalars(select(Subscriber).where(Subscriber.email == email)).one()
        session.refresh(subscriber)
        assert subscriber.status == SubscriberStatus.CONFIRMED
        unsubscribe = received.message["List-Unsubscribe"].strip("<>")
        assert unsubscribe == received.link("unsubscribe")
    assert session.scalar(select(func.count()).select_from(Subscriber)
                          .where(Subscriber.status == SubscriberStatus.CONFIRMED)) == 3
