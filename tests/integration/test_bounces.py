"""Bounces and complaints, from the report to the suppression list, the webhook and the CLI."""

import dataclasses
import hashlib
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from sqlalchemy import event, func, insert, select, text

from service.bounce_commands import register_bounce_commands
from service.bounce_reports import parse_report
from service.bounces import find_suppression, record_bounce
from service.config import get_settings
from service.deliveries import RetryLater, deliver
from service.extensions import db
from service.mail.transport import OutboxTransport, SMTPSettings, SMTPTransport
from service.models import (
    Bounce,
    BounceKind,
    CapturedEmail,
    Delivery,
    DeliveryState,
    Subscriber,
    SubscriberStatus,
    SubscriptionStatus,
    Suppression,
    SuppressionReason,
)
from service.pauses import open_pause, resume_sending
from service.subscriptions import ConfirmationPolicy, SubscriptionRequest, confirm_subscription, subscribe
from service.suppressions import address_hash, is_suppressed, suppress, suppressed_addresses
from service.web import bounce_webhook
from tests.bounce_messages import arf, dsn, recipient

BOUNCE_ADDRESS = "bounces@example.com"
WEBHOOK_TOKEN = "bounce-webhook-token-0123456789"
ADMIN_TOKEN = "admin-token-for-tests-0123456789"
# Tests subscribe the same address several times; the flood limits would get in the way.
NO_LIMITS = ConfirmationPolicy(resend_after=timedelta(0), max_while_pending=1000)
EMAIL = "peggy@example.com"
FORWARDED = "peggy.carter@forwarded.example.net"


def _with_bounce_edges(app):
    """Register the webhook and the commands unless the app does already."""
    if "bounce_webhook" not in app.blueprints:
        app.register_blueprint(bounce_webhook.bp)
    if "bounces" not in app.cli.commands:
        register_bounce_commands(app)
    return app


@pytest.fixture(scope="module")
def bounce_app(stack):
    """An app with VERP, both tokens, a pause after 2 policy bounces and 3 soft bounces allowed."""
    bounce_app = _with_bounce_edges(stack.make_app(
        BOUNCE_ADDRESS=BOUNCE_ADDRESS, BOUNCE_WEBHOOK_TOKEN=WEBHOOK_TOKEN, ADMIN_API_TOKEN=ADMIN_TOKEN,
        POLICY_PAUSE_THRESHOLD="2", BOUNCE_SOFT_LIMIT="3"))
    yield bounce_app
    with bounce_app.app_context():
        db.engine.dispose()


@pytest.fixture
def bounce_session(app, bounce_app):
    """A session of the VERP app on empty tables (``app`` empties them)."""
    with bounce_app.app_context():
        yield db.session
        db.session.rollback()


@pytest.fixture
def webhook(bounce_app, bounce_session):
    return bounce_app.test_client()


def _sent_confirmation(session, email=EMAIL) -> Delivery:
    """Subscribe (again) and send the confirmation to the outbox, as the worker would."""
    outcome = subscribe(session, SubscriptionRequest(email, ["marvel-news"]), "weekly",
                        policy=NO_LIMITS)
    session.commit()
    [delivery_id] = outcome.delivery_ids
    assert deliver(session, delivery_id, OutboxTransport(session), get_settings()).state == DeliveryState.SENT
    return session.get(Delivery, delivery_id)


def _sent_copy(session, delivery) -> CapturedEmail:
    return session.scalars(select(CapturedEmail).where(CapturedEmail.message_id == delivery.message_id)).one()


def _bounce_of(session, delivery, status, final_recipient=EMAIL, **options) -> bytes:
    """A DSN for this delivery, sent back to its envelope sender (the VERP address, if any)."""
    sent = _sent_copy(session, delivery)
    return dsn(recipient(final_recipient, status, diagnostic=f"smtp; 550 {status} <{final_recipient}>: no"),
               to=sent.mail_from, original=sent.raw, **options)


def _record(session, raw, settings=None, **options):
    [report] = parse_report(raw)
    bounce = record_bounce(session, settings or get_settings(), report, **options)
    session.commit()
    return bounce


def _count(session, model) -> int:
    return session.scalar(select(func.count()).select_from(model))


# ------------------------------------------------------------------ acting on bounces


def test_a_hard_bounce_via_verp_suppresses_the_address_and_the_next_message_is_not_sent(
        bounce_session, smtp):
    delivery = _sent_confirmation(bounce_session)
    # The reader's mail is forwarded, and the forward target bounced: only VERP ties it to us.
    bounce = _record(bounce_session, _bounce_of(bounce_session, delivery, "5.1.1", FORWARDED,
                                                 returned="none"))
    assert (bounce.kind, bounce.delivery_id) == (BounceKind.HARD, delivery.id)
    assert bounce_session.get(Delivery, delivery.id).state == DeliveryState.BOUNCED
    assert find_suppression(bounce_session, EMAIL).reason == SuppressionReason.HARD_BOUNCE

    outcome = subscribe(bounce_session, SubscriptionRequest(EMAIL, ["tv-news"]), "weekly",
                        policy=NO_LIMITS)
    bounce_session.commit()
    settings = get_settings()
    with SMTPTransport(SMTPSettings(settings.SMTP_HOST, settings.SMTP_PORT)) as transport:
        result = deliver(bounce_session, outcome.delivery_ids[0], transport, settings)
    assert result.state == DeliveryState.SUPPRESSED
    assert bounce_session.get(Delivery, outcome.delivery_ids[0]).last_error == "address suppressed"
    assert smtp.messages_to(EMAIL) == []


def test_soft_bounces_suppress_the_address_once_they_reach_the_limit(bounce_session):
    for count in (1, 2, 3):
        delivery = _sent_confirmation(bounce_session)
        assert not is_suppressed(bounce_session, EMAIL)
        bounce = _record(bounce_session, _bounce_of(bounce_session, delivery, "4.2.2"))
        assert bounce.kind == BounceKind.SOFT
        assert bounce_session.scalars(select(Subscriber)).one().soft_bounce_count == count
        assert bounce_session.get(Delivery, delivery.id).state == DeliveryState.SENT
    assert find_suppression(bounce_session, EMAIL).reason == SuppressionReason.SOFT_BOUNCES


def test_a_complaint_unsubscribes_and_suppresses_the_reader(bounce_session):
    delivery = _sent_confirmation(bounce_session)
    subscriber = delivery.subscriber
    confirm_subscription(bounce_session, subscriber.id, subscriber.token_epoch)
    bounce_session.commit()
    sent = _sent_copy(bounce_session, delivery)
    bounce = _record(bounce_session, arf("abuse", mail_from=sent.mail_from, original=sent.raw))
    assert (bounce.kind, bounce.delivery_id) == (BounceKind.COMPLAINT, delivery.id)
    bounce_session.refresh(subscriber)
    assert subscriber.status == SubscriberStatus.UNSUBSCRIBED
    assert {s.status for s in subscriber.subscriptions} == {SubscriptionStatus.UNSUBSCRIBED}
    assert find_suppression(bounce_session, EMAIL).reason == SuppressionReason.COMPLAINT
    assert bounce_session.get(Delivery, delivery.id).state == DeliveryState.BOUNCED


def test_a_policy_bounce_alerts_the_operator_and_pauses_sending_at_the_threshold(bounce_session, caplog):
    caplog.set_level(logging.INFO, logger="service")
    first = _sent_confirmation(bounce_session)
    bounce = _record(bounce_session, _bounce_of(bounce_session, first, "5.7.1"))
    assert bounce.kind == BounceKind.POLICY
    assert not is_suppressed(bounce_session, EMAIL)
    assert bounce_session.scalars(select(Subscriber)).one().soft_bounce_count == 0
    assert open_pause(bounce_session) is None
    [alert] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert f"policy bounce {bounce.id}" in alert.getMessage()

    second = _sent_confirmation(bounce_session, "howard@example.com")
    _record(bounce_session, _bounce_of(bounce_session, second, "5.7.1", "howard@example.com"))
    assert "2 policy bounces" in open_pause(bounce_session).reason

    waiting = subscribe(bounce_session, SubscriptionRequest("jarvis@example.com", ["tv-news"]), "weekly")
    bounce_session.commit()
    with pytest.raises(RetryLater):
        deliver(bounce_session, waiting.delivery_ids[0], OutboxTransport(bounce_session), get_settings())


def test_resuming_restarts_the_policy_count(bounce_session):
    for email in ("a@example.com", "b@example.com"):
        delivery = _sent_confirmation(bounce_session, email)
        _record(bounce_session, _bounce_of(bounce_session, delivery, "5.7.1", email))
    assert open_pause(bounce_session) is not None
    resume_sending(bounce_session)
    bounce_session.commit()
    delivery = _sent_confirmation(bounce_session, "c@example.com")
    _record(bounce_session, _bounce_of(bounce_session, delivery, "5.7.1", "c@example.com"))
    assert open_pause(bounce_session) is None


def test_with_a_threshold_of_zero_policy_bounces_never_pause_sending(bounce_session):
    settings = dataclasses.replace(get_settings(), POLICY_PAUSE_THRESHOLD=0)
    for email in ("a@example.com", "b@example.com", "c@example.com"):
        delivery = _sent_confirmation(bounce_session, email)
        _record(bounce_session, _bounce_of(bounce_session, delivery, "5.7.1", email), settings)
    assert open_pause(bounce_session) is None


def test_no_address_reaches_the_logs(bounce_session, caplog):
    caplog.set_level(logging.DEBUG, logger="service")
    readers = {"5.1.1": "peggy@example.com", "4.2.2": "howard@example.com", "5.7.1": "jarvis@example.com"}
    for status, email in readers.items():
        delivery = _sent_confirmation(bounce_session, email)
        _record(bounce_session, _bounce_of(bounce_session, delivery, status, email))
    sent = _sent_copy(bounce_session, _sent_confirmation(bounce_session, "dum-e@example.com"))
    _record(bounce_session, arf(mail_from=sent.mail_from, rcpt_to="dum-e@example.com", original=sent.raw))
    assert len([r for r in caplog.records if r.name == "service.bounces"]) >= 6
    assert not {"peggy", "howard", "jarvis", "dum-e"} & set(caplog.text.replace("@", " ").split())


def test_a_forged_verp_address_maps_to_nothing(bounce_session):
    delivery = _sent_confirmation(bounce_session)
    sent = _sent_copy(bounce_session, delivery)
    forged = f"bounces+d{delivery.id}-0000000000@example.com"
    # Everything else in the report is genuine, the Message-ID included.
    assert _record(bounce_session, dsn(recipient(EMAIL, "5.1.1"), to=forged, original=sent.raw)) is None
    assert _count(bounce_session, Bounce) == 0
    assert not is_suppressed(bounce_session, EMAIL)
    assert bounce_session.get(Delivery, delivery.id).state == DeliveryState.SENT


def test_with_verp_a_raw_report_naming_only_an_address_maps_to_nothing(bounce_session):
    delivery = _sent_confirmation(bounce_session)
    # Anyone can mail the bounce address: this names a reader, and no mail of ours.
    raw = dsn(recipient(EMAIL, "5.1.1"), to=BOUNCE_ADDRESS, returned="none")
    assert _record(bounce_session, raw) is None
    assert _count(bounce_session, Bounce) == 0
    assert not is_suppressed(bounce_session, EMAIL)
    assert bounce_session.get(Delivery, delivery.id).state == DeliveryState.SENT

    # The same report, with no BOUNCE_ADDRESS configured, is matched by the address as before.
    without_verp = dataclasses.replace(get_settings(), BOUNCE_ADDRESS=None)
    bounce = _record(bounce_session, raw, without_verp)
    assert (bounce.delivery_id, bounce.subscriber_id) == (None, delivery.subscriber_id)
    assert is_suppressed(bounce_session, EMAIL)


def test_with_verp_a_raw_report_is_still_tied_by_the_message_id_of_our_mail(bounce_session):
    delivery = _sent_confirmation(bounce_session)
    sent = _sent_copy(bounce_session, delivery)
    bounce = _record(bounce_session, dsn(recipient(EMAIL, "5.1.1"), to=BOUNCE_ADDRESS, original=sent.raw))
    assert bounce.delivery_id == delivery.id
    assert is_suppressed(bounce_session, EMAIL)


# PostgreSQL only: on SQLite the write lock taken before the look leaves no other writer a gap.
@pytest.mark.parametrize("stack", ["postgres"], indirect=True)
def test_a_bounce_recorded_concurrently_between_look_and_insert_is_returned(bounce_session, stack):
    delivery = _sent_confirmation(bounce_session)
    [report] = parse_report(_bounce_of(bounce_session, delivery, "4.2.2"))
    engine, rival = db.engine, []

    def insert_the_rival_first(connection, cursor, statement, parameters, context, executemany):
        if rival or not statement.startswith("INSERT INTO bounces"):
            return
        rival.append(None)
        with engine.connect() as other:  # another transaction, committed before our insert runs
            other.execute(text("SET LOCAL lock_timeout = '5s'"))  # fail, not hang, if it ever waits on us
            rival[0] = other.execute(insert(Bounce).values(
                kind=BounceKind.SOFT, email_hash=address_hash(EMAIL), delivery_id=delivery.id,
                subscriber_id=delivery.subscriber_id, status="4.2.2").returning(Bounce.id)).scalar_one()
            other.commit()

    event.listen(engine, "before_cursor_execute", insert_the_rival_first)
    try:
        bounce = record_bounce(bounce_session, get_settings(), report)
        bounce_session.commit()
    finally:
        event.remove(engine, "before_cursor_execute", insert_the_rival_first)
    assert rival and bounce.id == rival[0]
    assert _count(bounce_session, Bounce) == 1
    assert bounce_session.scalars(select(Subscriber)).one().soft_bounce_count == 0  # the rival's to count


def test_without_verp_a_bounce_is_tied_to_its_delivery_by_message_id(session):
    delivery = _sent_confirmation(session)
    sent = _sent_copy(session, delivery)
    assert sent.mail_from == "news@example.com"  # no BOUNCE_ADDRESS: no VERP
    bounce = _record(session, dsn(recipient(FORWARDED, "5.1.1"), to=sent.mail_from, original=sent.raw))
    assert (bounce.delivery_id, bounce.subscriber_id) == (delivery.id, delivery.subscriber_id)
    assert is_suppressed(session, EMAIL)
    assert not is_suppressed(session, FORWARDED)


def test_a_bounce_with_only_an_address_is_tied_to_the_subscriber(session):
    delivery = _sent_confirmation(session)
    bounce = _record(session, dsn(recipient("Peggy@Example.com", "5.1.1"), to="news@example.com",
                                  returned="none"))
    assert (bounce.delivery_id, bounce.subscriber_id) == (None, delivery.subscriber_id)
    assert is_suppressed(session, EMAIL)


def test_a_bounce_for_an_address_we_do_not_know_is_not_stored(session):
    _sent_confirmation(session)
    raw = dsn(recipient("stranger@example.org", "5.1.1"), to="news@example.com", returned="none")
    assert _record(session, raw) is None
    assert _count(session, Bounce) == 0
    assert not is_suppressed(session, "stranger@example.org")


def test_the_suppression_outlives_the_subscriber(bounce_session):
    delivery = _sent_confirmation(bounce_session)
    bounce = _record(bounce_session, _bounce_of(bounce_session, delivery, "5.1.1"))
    bounce_session.delete(bounce_session.get(Subscriber, delivery.subscriber_id))
    bounce_session.commit()
    assert is_suppressed(bounce_session, EMAIL)
    kept = bounce_session.get(Bounce, bounce.id)
    bounce_session.refresh(kept)
    assert kept.subscriber_id is None and "peggy" not in kept.email_hash

    outcome = subscribe(bounce_session, SubscriptionRequest(EMAIL, ["marvel-news"]), "weekly")
    bounce_session.commit()
    result = deliver(bounce_session, outcome.delivery_ids[0], OutboxTransport(bounce_session), get_settings())
    assert result.state == DeliveryState.SUPPRESSED


# ------------------------------------------------------------------ webhook


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong-token"}, {"Authorization": WEBHOOK_TOKEN},
     {"Authorization": f"Basic {WEBHOOK_TOKEN}"}, {"Authorization": f"Bearer {WEBHOOK_TOKEN}x"},
     {"Authorization": "Bearer "}],
    ids=["none", "wrong", "no-scheme", "basic", "longer", "empty"],
)
def test_the_webhook_refuses_a_missing_or_wrong_token(webhook, bounce_session, headers):
    delivery = _sent_confirmation(bounce_session)
    response = webhook.post("/api/v1/bounces", data=_bounce_of(bounce_session, delivery, "5.1.1"),
                            content_type="message/rfc822", headers=headers)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert set(response.json) == {"error"}
    assert _count(bounce_session, Bounce) == 0
    assert not is_suppressed(bounce_session, EMAIL)


def test_the_webhook_is_closed_without_a_configured_token(stack, app):
    closed_app = _with_bounce_edges(stack.make_app())
    try:
        response = closed_app.test_client().post("/api/v1/bounces", json={"email": EMAIL, "type": "hard"},
                                                 headers={"Authorization": "Bearer "})
        assert response.status_code == 401
        assert "BOUNCE_WEBHOOK_TOKEN" in response.json["error"]
    finally:
        with closed_app.app_context():
            db.engine.dispose()


@pytest.mark.parametrize("token", [WEBHOOK_TOKEN, ADMIN_TOKEN], ids=["webhook-token", "admin-token"])
def test_a_raw_report_posted_to_the_webhook_is_recorded(webhook, bounce_session, token):
    delivery = _sent_confirmation(bounce_session)
    verp = _sent_copy(bounce_session, delivery).mail_from
    raw = _bounce_of(bounce_session, delivery, "5.1.1", returned="none").replace(
        verp.encode(), BOUNCE_ADDRESS.encode())  # the MTA rewrote the headers; the envelope says
    response = webhook.post("/api/v1/bounces", query_string={"recipient": verp}, data=raw,
                            content_type="message/rfc822", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200, response.json
    [recorded] = response.json["recorded"]
    assert (recorded["kind"], recorded["status"], recorded["delivery_id"]) == ("hard", "5.1.1", delivery.id)
    assert (response.json["reports"], response.json["unmatched"]) == (1, 0)
    assert "peggy" not in response.get_data(as_text=True)
    assert bounce_session.get(Delivery, delivery.id).state == DeliveryState.BOUNCED


def test_a_recipient_whose_plus_was_not_url_encoded_still_names_the_delivery(webhook, bounce_session):
    delivery = _sent_confirmation(bounce_session)
    verp = _sent_copy(bounce_session, delivery).mail_from
    raw = dsn(recipient(EMAIL, "5.1.1"), to=BOUNCE_ADDRESS, returned="none")
    response = webhook.post(f"/api/v1/bounces?recipient={verp}", data=raw, content_type="message/rfc822",
                            headers={"Authorization": f"Bearer {WEBHOOK_TOKEN}"})
    assert response.json["recorded"][0]["delivery_id"] == delivery.id


def test_an_esp_bounce_posted_as_json_is_recorded_once_however_often_it_comes(webhook, bounce_session):
    delivery = _sent_confirmation(bounce_session)
    body = {"email": EMAIL, "type": "soft", "status": "4.2.2", "diagnostic": "452 4.2.2 Mailbox full",
            "message_id": delivery.message_id}
    auth = {"Authorization": f"Bearer {WEBHOOK_TOKEN}"}
    first = webhook.post("/api/v1/bounces", json=body, headers=auth)
    again = webhook.post("/api/v1/bounces", json=[body], headers=auth)
    assert first.status_code == again.status_code == 200
    assert first.json["recorded"][0]["bounce_id"] == again.json["recorded"][0]["bounce_id"]
    assert first.json["recorded"][0]["delivery_id"] == delivery.id
    assert _count(bounce_session, Bounce) == 1
    assert bounce_session.scalars(select(Subscriber)).one().soft_bounce_count == 1


def test_a_raw_report_posted_naming_only_an_address_is_answered_unmatched(webhook, bounce_session):
    _sent_confirmation(bounce_session)
    raw = dsn(recipient(EMAIL, "5.1.1"), to=BOUNCE_ADDRESS, returned="none")
    response = webhook.post("/api/v1/bounces", data=raw, content_type="message/rfc822",
                            headers={"Authorization": f"Bearer {WEBHOOK_TOKEN}"})
    assert response.status_code == 200
    assert response.json == {"reports": 1, "recorded": [], "unmatched": 1}
    assert not is_suppressed(bounce_session, EMAIL)


def test_an_esp_bounce_naming_only_an_address_is_tied_to_the_subscriber(webhook, bounce_session):
    delivery = _sent_confirmation(bounce_session)
    response = webhook.post("/api/v1/bounces", json={"email": EMAIL, "type": "hard", "status": "5.1.1"},
                            headers={"Authorization": f"Bearer {WEBHOOK_TOKEN}"})
    assert response.status_code == 200
    [recorded] = response.json["recorded"]
    assert recorded["delivery_id"] is None
    assert bounce_session.get(Bounce, recorded["bounce_id"]).subscriber_id == delivery.subscriber_id
    assert find_suppression(bounce_session, EMAIL).reason == SuppressionReason.HARD_BOUNCE


def test_the_same_raw_report_twice_counts_once(webhook, bounce_session):
    delivery = _sent_confirmation(bounce_session)
    raw = _bounce_of(bounce_session, delivery, "4.2.2")
    auth = {"Authorization": f"Bearer {WEBHOOK_TOKEN}"}
    for _ in range(2):
        assert webhook.post("/api/v1/bounces", data=raw, content_type="message/rfc822",
                            headers=auth).status_code == 200
    assert _count(bounce_session, Bounce) == 1
    assert bounce_session.scalars(select(Subscriber)).one().soft_bounce_count == 1


def test_the_same_report_posted_concurrently_counts_once(bounce_app, bounce_session):
    delivery = _sent_confirmation(bounce_session)
    raw = _bounce_of(bounce_session, delivery, "4.2.2")
    start = threading.Barrier(4)

    def post() -> int:
        client = bounce_app.test_client()  # a thread of its own: its own app context and session
        start.wait()
        return client.post("/api/v1/bounces", data=raw, content_type="message/rfc822",
                           headers={"Authorization": f"Bearer {WEBHOOK_TOKEN}"}).status_code

    with ThreadPoolExecutor(4) as pool:
        statuses = list(pool.map(lambda _: post(), range(4)))
    assert statuses == [200] * 4
    bounce_session.rollback()
    assert _count(bounce_session, Bounce) == 1
    assert bounce_session.scalars(select(Subscriber)).one().soft_bounce_count == 1


def test_a_not_spam_report_is_accepted_and_changes_nothing(webhook, bounce_session):
    delivery = _sent_confirmation(bounce_session)
    sent = _sent_copy(bounce_session, delivery)
    response = webhook.post("/api/v1/bounces", data=arf("not-spam", mail_from=sent.mail_from),
                            content_type="message/rfc822",
                            headers={"Authorization": f"Bearer {WEBHOOK_TOKEN}"})
    assert response.status_code == 200
    assert response.json == {"reports": 0, "recorded": [], "unmatched": 0}
    assert _count(bounce_session, Bounce) == 0


@pytest.mark.parametrize(("kwargs", "expected"), [
    ({"data": b"Subject: hello\n\nJust saying hi.\n", "content_type": "message/rfc822"}, "not a bounce"),
    ({"data": b"Content-Type: multipart/report; report-type=delivery-status\n\nx\n",
      "content_type": "message/rfc822"}, "boundary"),
    ({"data": b"", "content_type": "message/rfc822"}, "body"),
    ({"data": b"{nope", "content_type": "application/json"}, "body"),
    ({"json": {"email": EMAIL, "type": "bounced"}}, "type"),
], ids=["plain-message", "malformed-multipart", "empty", "broken-json", "bad-field"])
def test_the_webhook_answers_422_naming_the_problem(webhook, bounce_session, kwargs, expected):
    response = webhook.post("/api/v1/bounces", headers={"Authorization": f"Bearer {WEBHOOK_TOKEN}"}, **kwargs)
    assert response.status_code == 422
    assert expected in (response.json["error"] + " " + " ".join(response.json.get("errors", {})))
    assert _count(bounce_session, Bounce) == 0


def test_the_webhook_refuses_other_content_types_and_huge_bodies(webhook, bounce_session):
    auth = {"Authorization": f"Bearer {WEBHOOK_TOKEN}"}
    form = webhook.post("/api/v1/bounces", data={"email": EMAIL}, headers=auth)
    assert form.status_code == 415
    huge = webhook.post("/api/v1/bounces", data=b"x" * (3 * 1024 * 1024), content_type="message/rfc822",
                        headers=auth)
    assert huge.status_code == 413
    assert huge.json["error"]


# ------------------------------------------------------------------ CLI


def test_bounces_ingest_reads_a_report_from_standard_input(bounce_app, bounce_session):
    delivery = _sent_confirmation(bounce_session)
    raw = _bounce_of(bounce_session, delivery, "5.1.1")
    result = bounce_app.test_cli_runner().invoke(args=["bounces", "ingest"], input=raw)
    assert result.exit_code == 0, result.output
    assert f"hard, status 5.1.1, delivery {delivery.id}" in result.output
    assert find_suppression(bounce_session, EMAIL).reason == SuppressionReason.HARD_BOUNCE


def test_bounces_ingest_reads_a_file_and_takes_the_envelope_recipient(bounce_app, bounce_session, tmp_path):
    delivery = _sent_confirmation(bounce_session)
    verp = _sent_copy(bounce_session, delivery).mail_from
    report = tmp_path / "bounce.eml"
    report.write_bytes(dsn(recipient(EMAIL, "4.2.2"), to=BOUNCE_ADDRESS, returned="none"))
    result = bounce_app.test_cli_runner().invoke(
        args=["bounces", "ingest", str(report), "--recipient", verp])
    assert result.exit_code == 0, result.output
    assert f"delivery {delivery.id}" in result.output


def test_bounces_ingest_ignores_mail_that_is_no_bounce_without_failing(bounce_app, bounce_session):
    result = bounce_app.test_cli_runner().invoke(
        args=["bounces", "ingest"], input=b"Subject: buy now\n\ncheap watches\n")
    assert result.exit_code == 0  # an MTA pipe must not send junk back to its (forged) sender
    assert "not a bounce" in result.stderr
    assert _count(bounce_session, Bounce) == 0


def test_bounces_ingest_ignores_a_complaint_naming_only_an_address(bounce_app, bounce_session):
    delivery = _sent_confirmation(bounce_session)
    confirm_subscription(bounce_session, delivery.subscriber_id, delivery.subscriber.token_epoch)
    bounce_session.commit()
    # Mailed to the bare bounce address, about a message that is not ours.
    raw = arf("abuse", mail_from=BOUNCE_ADDRESS, rcpt_to=EMAIL)
    result = bounce_app.test_cli_runner().invoke(args=["bounces", "ingest"], input=raw)
    assert result.exit_code == 0, result.output
    assert "1 report(s) about none of our deliveries" in result.output
    assert _count(bounce_session, Bounce) == 0
    subscriber = bounce_session.get(Subscriber, delivery.subscriber_id)
    bounce_session.refresh(subscriber)
    assert subscriber.status == SubscriberStatus.CONFIRMED
    assert not is_suppressed(bounce_session, EMAIL)


def test_sending_can_be_paused_and_resumed_from_the_cli(bounce_app, bounce_session):
    runner = bounce_app.test_cli_runner()
    assert "sending: running" in runner.invoke(args=["sending", "status"]).output
    assert runner.invoke(args=["sending", "pause", "relay trouble"]).exit_code == 0
    status = runner.invoke(args=["sending", "status"]).output
    assert "paused since" in status and "relay trouble" in status
    assert "pauses at 2" in status
    assert "sending resumed" in runner.invoke(args=["sending", "resume"]).output
    assert open_pause(bounce_session) is None


def test_suppressions_can_be_added_checked_and_removed_from_the_cli(bounce_app, bounce_session):
    runner = bounce_app.test_cli_runner()
    assert runner.invoke(args=["suppressions", "check", EMAIL]).output.strip() == "not suppressed"
    assert runner.invoke(args=["suppressions", "add", " Peggy@Example.COM ", "--detail", "asked by phone"]
                         ).exit_code == 0
    assert is_suppressed(bounce_session, EMAIL)
    assert "manual: asked by phone" in runner.invoke(args=["suppressions", "check", EMAIL]).output
    assert "removed" in runner.invoke(args=["suppressions", "remove", EMAIL]).output
    assert not is_suppressed(bounce_session, EMAIL)
    refused = runner.invoke(args=["suppressions", "add", "not an address"])
    assert refused.exit_code == 2


def test_the_cli_takes_any_stored_address_and_either_spelling_of_a_domain(bounce_app, bounce_session):
    runner = bounce_app.test_cli_runner()
    # The form now refuses a local part outside ASCII, but readers stored before must stay suppressible.
    assert runner.invoke(args=["suppressions", "add", "josé@example.com"]).exit_code == 0
    assert is_suppressed(bounce_session, "josé@example.com")
    assert runner.invoke(args=["suppressions", "add", "Reader@Bücher.example"]).exit_code == 0
    assert "manual" in runner.invoke(args=["suppressions", "check", "reader@xn--bcher-kva.example"]).output


def test_a_suppression_hashed_under_the_old_unicode_spelling_still_holds(bounce_app, bounce_session):
    # Before migration 0007 an international domain was stored and hashed in Unicode, and
    # a hash cannot be rewritten: an erased reader's address is gone.
    unicode_hash = hashlib.sha256("reader@bücher.example".encode()).hexdigest()
    bounce_session.add(Suppression(email_hash=unicode_hash, reason=SuppressionReason.ERASED))
    bounce_session.commit()
    ascii_spelling = "reader@xn--bcher-kva.example"
    assert is_suppressed(bounce_session, ascii_spelling)
    assert suppressed_addresses(bounce_session, [ascii_spelling, EMAIL]) == {ascii_spelling}
    assert find_suppression(bounce_session, ascii_spelling).reason == SuppressionReason.ERASED
    assert suppress(bounce_session, ascii_spelling, SuppressionReason.MANUAL).email_hash == unicode_hash
    runner = bounce_app.test_cli_runner()
    assert "removed" in runner.invoke(args=["suppressions", "remove", "Reader@Bücher.example"]).output
    assert not is_suppressed(bounce_session, ascii_spelling)


def test_lifting_a_suppression_forgets_the_soft_bounces(bounce_app, bounce_session):
    for _ in range(3):
        delivery = _sent_confirmation(bounce_session)
        _record(bounce_session, _bounce_of(bounce_session, delivery, "4.2.2"))
    assert is_suppressed(bounce_session, EMAIL)
    bounce_app.test_cli_runner().invoke(args=["suppressions", "remove", EMAIL])
    subscriber = bounce_session.scalars(select(Subscriber)).one()
    bounce_session.refresh(subscriber)
    assert subscriber.soft_bounce_count == 0


def test_a_stored_bounce_keeps_the_servers_words_but_not_the_address(bounce_session):
    delivery = _sent_confirmation(bounce_session)
    bounce = _record(bounce_session, _bounce_of(bounce_session, delivery, "5.1.1"))
    assert "5.1.1" in bounce.diagnostic and "<address>" in bounce.diagnostic
    assert EMAIL not in bounce.diagnostic
