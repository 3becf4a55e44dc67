"""DKIM signatures as verified by dkimpy, Feedback-ID, and the global send rate."""

import base64
from datetime import timedelta

import dkim
import pytest
import redis
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from service.articles import ArticleInput, ingest_articles
from service.config import get_settings
from service.deliveries import deliver
from service.digests import plan_digests
from service.extensions import db
from service.mail.ratelimit import LocalTokenBucket, RedisTokenBucket
from service.mail.transport import transport_for
from service.models import utcnow
from service.subscriptions import SubscriptionRequest, confirm_subscription, subscribe
from tests.conftest import TEST_REDIS_URL

EMAIL = "peggy@example.com"


@pytest.fixture(scope="module")
def dkim_key():
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(serialization.Encoding.DER,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    record = b"v=DKIM1; k=rsa; p=" + base64.b64encode(public)
    return pem, record


def _send_all(settings, delivery_ids):
    transport = transport_for(settings, db.session)
    try:
        for delivery_id in delivery_ids:
            deliver(db.session, delivery_id, transport, settings)
    finally:
        transport.close()


def _send_confirmation(app):
    with app.app_context():
        outcome = subscribe(db.session, SubscriptionRequest(EMAIL, ["marvel-news"]), "weekly")
        db.session.commit()
        settings = get_settings()
        transport = transport_for(settings, db.session)
        try:
            deliver(db.session, outcome.delivery_ids[0], transport, settings)
        finally:
            transport.close()


def test_messages_are_dkim_signed_over_the_list_unsubscribe_headers(stack, app, smtp, dkim_key):
    pem, record = dkim_key
    signing = stack.make_app(DKIM_DOMAIN="example.com", DKIM_SELECTOR="news2026",
                             DKIM_PRIVATE_KEY=pem.replace("\n", "\\n"))
    _send_confirmation(signing)
    [received] = smtp.wait_for(EMAIL)
    signature = received.message["DKIM-Signature"]
    assert "d=example.com" in signature and "s=news2026" in signature
    signed = signature.split("h=", 1)[1].split(";", 1)[0].replace(" ", "").replace("\r\n", "").lower()
    assert "list-unsubscribe" in signed.split(":") and "list-unsubscribe-post" in signed.split(":")

    def dns(name, timeout=5):
        assert name == b"news2026._domainkey.example.com."
        return record

    assert dkim.verify(received.raw, dnsfunc=dns)
    # Sent without dot-stuffing (Envelope.transparent): the signature adds no line starting with a dot.
    assert not received.raw.startswith(b".") and b"\r\n." not in received.raw
    tampered = received.raw.replace(b"List-Unsubscribe-Post: List-Unsubscribe=One-Click",
                                    b"List-Unsubscribe-Post: List-Unsubscribe=Twice")
    assert not dkim.verify(tampered, dnsfunc=dns)


def test_a_feedback_id_names_the_stream(stack, app, smtp):
    _send_confirmation(stack.make_app(FEEDBACK_ID_SENDER="marvelnews"))
    [received] = smtp.wait_for(EMAIL)
    assert received.message["Feedback-ID"] == "transactional:confirmation:marvelnews"


def test_the_redis_bucket_is_shared_by_every_worker():
    client = redis.Redis.from_url(TEST_REDIS_URL)
    client.delete("test:send-rate")
    worker_a = RedisTokenBucket(client, "test:send-rate", rate=1, burst=5)
    worker_b = RedisTokenBucket(client, "test:send-rate", rate=1, burst=5)
    granted = [bucket.try_acquire() == 0 for bucket in (worker_a, worker_b) * 5]
    assert granted.count(True) == 5  # the burst is shared, not per worker
    assert worker_a.try_acquire() > 0
    assert 0 < worker_b.try_acquire() <= 1.0


def test_the_local_bucket_grants_its_burst_then_asks_to_wait():
    bucket = LocalTokenBucket(rate=2, burst=3)
    assert [bucket.try_acquire() == 0 for _ in range(3)] == [True, True, True]
    assert 0 < bucket.try_acquire() <= 0.5


def test_digests_can_come_from_another_address_than_confirmations(stack, app, smtp):
    sender = stack.make_app(DIGEST_MAIL_FROM="Marvel Weekly <weekly@example.com>")
    with sender.app_context():
        settings = get_settings()
        outcome = subscribe(db.session, SubscriptionRequest(EMAIL, ["marvel-news"]), "weekly")
        db.session.commit()
        _send_all(settings, outcome.delivery_ids)  # the confirmation, while still pending
        confirm_subscription(db.session, outcome.subscriber_id, 1)
        db.session.commit()
        published = utcnow() + timedelta(seconds=1)
        ingest_articles(db.session, [ArticleInput("Atwell on set", "https://www.example.com/a", published,
                                                  tags=["marvel"])])
        db.session.commit()
        [batch] = [b for b in plan_digests(db.session, settings, published + timedelta(seconds=1),
                                           force=True) if b.delivery_ids]
        _send_all(settings, batch.delivery_ids)
    confirmation, digest = smtp.wait_for(EMAIL, count=2)
    assert confirmation.message["From"] == "Marvel News <news@example.com>"
    assert digest.message["From"] == "Marvel Weekly <weekly@example.com>"
    header_block = digest.raw.split(b"\r\n\r\n", 1)[0]
    assert b"=?" not in header_block  # nothing RFC 2047-encoded
    for name in (b"List-Unsubscribe:", b"List-Unsubscribe-Post:", b"List-Id:", b"Message-ID:"):
        assert header_block.count(b"\r\n" + name) == 1
