"""A reader's own data: a copy of everything we hold (GDPR articles 15 and 20) and
its erasure (article 17).

Erasure deletes the person and everything that names them, and leaves only what
holds no address: delivery ledger rows without their link, bounce rows with their
address hash, and a suppression entry (a hash too) so the address is never mailed
again by mistake. Callers commit.
"""

from __future__ import annotations

import logging
import re
from datetime import datetime
from email.utils import getaddresses
from typing import Any

from sqlalchemy import Select, delete, or_, select
from sqlalchemy.orm import Session

from service.errors import NotFound
from service.models import (
    Article,
    Bounce,
    CapturedEmail,
    ConsentRecord,
    Delivery,
    DigestItem,
    Subscriber,
    Subscription,
    SuppressionReason,
    Topic,
    utcnow,
)
from service.suppressions import address_hash, suppress, suppression_of

log = logging.getLogger(__name__)

ABOUT = (
    "A copy of everything this newsletter service holds about you: your address and settings, "
    "each topic you subscribed to with the record of your consent (when, where and how it was "
    "given, confirmed and withdrawn), the emails we sent or meant to send you (not their "
    "contents), the articles those digests carried, and any bounce reports about your address. "
    "Times are UTC, in ISO 8601."
)

# Anything that looks like an address in a server's reply (bounce diagnostics, SMTP errors).
_ADDRESS = re.compile(r"[^\s<>()\[\],;:\"']+@[^\s<>()\[\],;:\"']+")
ERASED_ADDRESS = "<erased>"


def export_subscriber(session: Session, subscriber_id: int) -> dict[str, Any]:
    """Everything we hold about this subscriber, as JSON-ready values; raises NotFound."""
    subscriber = session.get(Subscriber, subscriber_id)
    if subscriber is None:
        raise NotFound("no such subscriber")
    digest = address_hash(subscriber.email)
    suppression = suppression_of(session, subscriber.email)
    return {
        "about": ABOUT,
        "generated_at": _iso(utcnow()),
        "subscriber": {
            "id": subscriber.id,
            "email": subscriber.email,
            "name": subscriber.name,
            "frequency": subscriber.frequency.value,
            "timezone": subscriber.timezone,
            "status": subscriber.status.value,
            "created_at": _iso(subscriber.created_at),
            "confirmed_at": _iso(subscriber.confirmed_at),
            "unsubscribed_at": _iso(subscriber.unsubscribed_at),
            "confirmation_requested_at": _iso(subscriber.confirmation_requested_at),
            "digests_include_articles_since": _iso(subscriber.digest_since),
            "soft_bounce_count": subscriber.soft_bounce_count,
            "last_delivery_error": subscriber.last_delivery_error,
            "suppressed_at": _iso(subscriber.suppressed_at),
        },
        "suppression": None if suppression is None else {
            "reason": suppression.reason.value, "since": _iso(suppression.created_at),
        },
        "subscriptions": _subscriptions(session, subscriber),
        "deliveries": _deliveries(session, subscriber.id),
        "digest_items": _digest_items(session, subscriber.id),
        "bounces": _bounces(session, subscriber.id, digest),
    }


def erase_subscriber(session: Session, subscriber_id: int, via: str) -> bool:
    """Delete the subscriber and every row that names them, and suppress their address.

    False when there is no such subscriber (erased already): erasing twice is harmless.
    ``via`` (preferences, admin-api, cli ...) is kept in the suppression entry.
    """
    subscriber = session.get(Subscriber, subscriber_id, with_for_update=True)
    if subscriber is None:
        return False
    email = subscriber.email
    digest = address_hash(email)

    # Explicit rather than left to ON DELETE: it must not depend on SQLite's foreign_keys pragma.
    subscription_ids = select(Subscription.id).where(Subscription.subscriber_id == subscriber_id)
    session.execute(delete(ConsentRecord).where(ConsentRecord.subscription_id.in_(subscription_ids)))
    session.execute(delete(DigestItem).where(DigestItem.subscriber_id == subscriber_id))

    # The ledger keeps its counts, but no row may lead back to the person.
    message_ids: set[str] = set()
    for delivery in session.scalars(select(Delivery).where(Delivery.subscriber_id == subscriber_id)):
        delivery.subscriber = None
        delivery.last_error = _without_addresses(delivery.last_error, email)
        if delivery.message_id:
            message_ids.add(delivery.message_id)
    for bounce in session.scalars(_bounces_of(subscriber_id, digest)):
        bounce.subscriber_id = None
        bounce.diagnostic = _without_addresses(bounce.diagnostic, email)

    captured = [
        row.id for row in session.scalars(select(CapturedEmail).where(or_(
            CapturedEmail.recipients.icontains(email, autoescape=True),
            CapturedEmail.message_id.in_(message_ids),
        )))
        if row.message_id in message_ids or _addressed_to(row.recipients, email)
    ]
    if captured:
        session.execute(delete(CapturedEmail).where(CapturedEmail.id.in_(captured)))

    session.delete(subscriber)  # its subscriptions go with it (delete-orphan)
    session.flush()
    suppress(session, email, SuppressionReason.ERASED, detail=f"erased on request via {via}")
    log.info("subscriber %s erased via %s (%s captured emails deleted)", subscriber_id, via, len(captured))
    return True


def _subscriptions(session: Session, subscriber: Subscriber) -> list[dict[str, Any]]:
    subscriptions = session.scalars(
        select(Subscription).where(Subscription.subscriber_id == subscriber.id)
        .order_by(Subscription.created_at, Subscription.id)
    ).all()
    records: dict[int, list[ConsentRecord]] = {s.id: [] for s in subscriptions}
    for record in session.scalars(
        select(ConsentRecord).where(ConsentRecord.subscription_id.in_(list(records)))
        .order_by(ConsentRecord.requested_at, ConsentRecord.id)
    ):
        records[record.subscription_id].append(record)
    return [
        {
            "topic": {"slug": s.topic.slug, "name": s.topic.name},
            "status": s.status.value,
            "created_at": _iso(s.created_at),
            "confirmed_at": _iso(s.confirmed_at),
            "unsubscribed_at": _iso(s.unsubscribed_at),
            "consent_records": [_consent_json(r) for r in records[s.id]],
        }
        for s in subscriptions
    ]


def _consent_json(record: ConsentRecord) -> dict[str, Any]:
    return {
        "requested_at": _iso(record.requested_at),
        "source": record.source,
        "page_url": record.page_url,
        "ip_address": record.ip_address,
        "user_agent": record.user_agent,
        "consent_text_version": record.consent_text_version,
        "confirmed_at": _iso(record.confirmed_at),
        "withdrawn_at": _iso(record.withdrawn_at),
        "withdrawn_via": record.withdrawn_via,
    }


def _deliveries(session: Session, subscriber_id: int) -> list[dict[str, Any]]:
    deliveries = session.scalars(select(Delivery).where(Delivery.subscriber_id == subscriber_id)
                                 .order_by(Delivery.created_at, Delivery.id))
    return [
        {
            "kind": d.kind.value,
            "period": d.period,
            "state": d.state.value,
            "attempts": d.attempts,
            "last_error": d.last_error,
            "message_id": d.message_id,
            "created_at": _iso(d.created_at),
            "updated_at": _iso(d.updated_at),
            "sent_at": _iso(d.sent_at),
        }
        for d in deliveries
    ]


def _digest_items(session: Session, subscriber_id: int) -> list[dict[str, Any]]:
    rows = session.execute(
        select(Article.title, Article.url, Article.published_at, Topic.slug, Delivery.period)
        .select_from(DigestItem)
        .join(Article, DigestItem.article_id == Article.id)
        .join(Topic, DigestItem.topic_id == Topic.id)
        .join(Delivery, DigestItem.delivery_id == Delivery.id)
        .where(DigestItem.subscriber_id == subscriber_id)
        .order_by(Delivery.created_at, Article.published_at.desc(), DigestItem.article_id)
    )
    return [
        {"title": title, "url": url, "published_at": _iso(published_at), "topic": slug, "digest": period}
        for title, url, published_at, slug, period in rows
    ]


def _bounces(session: Session, subscriber_id: int, digest: str) -> list[dict[str, Any]]:
    bounces = session.scalars(_bounces_of(subscriber_id, digest).order_by(Bounce.received_at, Bounce.id))
    return [{"kind": b.kind.value, "status": b.status, "diagnostic": b.diagnostic,
             "received_at": _iso(b.received_at)} for b in bounces]


def _bounces_of(subscriber_id: int, digest: str) -> Select[tuple[Bounce]]:
    """Bounces recorded for the subscriber, or for their address before it was tied to them."""
    return select(Bounce).where(or_(Bounce.subscriber_id == subscriber_id, Bounce.email_hash == digest))


def _addressed_to(recipients: str, email: str) -> bool:
    return any(address.strip().lower() == email for _, address in getaddresses([recipients]))


def _without_addresses(text: str | None, email: str) -> str | None:
    """A server's reply with the reader's address (and any other) taken out."""
    if not text:
        return text
    text = re.sub(re.escape(email), ERASED_ADDRESS, text, flags=re.IGNORECASE)
    return _ADDRESS.sub(ERASED_ADDRESS, text)


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None
