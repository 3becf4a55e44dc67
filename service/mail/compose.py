"""Turn a ledger row into a finished message: who, which template, which links."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from email.utils import parseaddr

from sqlalchemy import select
from sqlalchemy.orm import joinedload, object_session

from service import links
from service.config import Settings
from service.mail.message import OutgoingMessage, make_message_id
from service.mail.rendering import RenderedEmail, render_email
from service.models import Article, Delivery, DigestItem, Subscriber, SubscriptionStatus, Topic


def list_unsubscribe_headers(subscriber_id: int) -> list[tuple[str, str]]:
    """RFC 8058 one-click unsubscribe: one HTTPS URL in angle brackets, plus the POST hint."""
    return [
        ("List-Unsubscribe", f"<{links.unsubscribe_url(subscriber_id)}>"),
        ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"),
    ]


def compose_confirmation(
    delivery: Delivery, subscriber: Subscriber, settings: Settings, now: datetime
) -> OutgoingMessage:
    """The double opt-in email, listing the topics still waiting for confirmation."""
    pending = sorted(
        (s.topic for s in subscriber.subscriptions if s.status == SubscriptionStatus.PENDING),
        key=lambda topic: topic.name,
    )
    context = {
        "name": subscriber.name,
        "email": subscriber.email,
        "topics": pending,
        "confirm_url": links.confirm_url(subscriber.id, subscriber.token_epoch),
        "unsubscribe_url": links.unsubscribe_url(subscriber.id),
        "preferences_url": links.preferences_url(subscriber.id),
        "expires_in_days": max(1, settings.CONFIRM_TOKEN_MAX_AGE // 86400),
        "sender_name": _display_name(settings.MAIL_FROM),
    }
    rendered = render_email("confirmation", context)
    return _outgoing(delivery, subscriber, settings, now, rendered, settings.MAIL_FROM, [])


def feedback_id_header(delivery: Delivery, settings: Settings) -> list[tuple[str, str]]:
    """Gmail's Feedback-ID (campaign:kind:sender), when FEEDBACK_ID_SENDER is set."""
    if not settings.FEEDBACK_ID_SENDER:
        return []
    campaign = (delivery.period or "transactional").replace(":", "-")
    return [("Feedback-ID", f"{campaign}:{delivery.kind.value}:{settings.FEEDBACK_ID_SENDER}")]


def stable_message_id(delivery: Delivery, settings: Settings) -> str:
    """The same Message-ID on every attempt, so a duplicate can be recognised.

    It ends in an HMAC of the delivery, so a forged bounce cannot guess the
    Message-ID of someone else's mail to pin a bounce on them.
    """
    stamp = f"{delivery.created_at:%Y%m%d%H%M%S}"
    local = f"{delivery.kind.value}.{delivery.id}.{stamp}"
    signature = hmac.new(settings.SECRET_KEY.encode(), local.encode(), hashlib.sha256).hexdigest()[:12]
    return make_message_id(settings.mail_domain, f"{local}.{signature}")


def _display_name(mailbox: str) -> str:
    name, address = parseaddr(mailbox)
    return name or address


@dataclass(frozen=True)
class DigestSection:
    topic: Topic
    articles: list[Article]


def digest_sections(pairs: Iterable[tuple[Topic, Article]]) -> list[DigestSection]:
    """Group articles by topic (topics by name), newest article first in each."""
    by_topic: dict[int, DigestSection] = {}
    for topic, article in pairs:
        by_topic.setdefault(topic.id, DigestSection(topic, [])).articles.append(article)
    sections = sorted(by_topic.values(), key=lambda section: section.topic.name.casefold())
    for section in sections:
        section.articles.sort(key=lambda article: (article.published_at, article.id), reverse=True)
    return sections


def render_digest(subscriber: Subscriber, sections: list[DigestSection], settings: Settings
                  ) -> RenderedEmail:
    """The digest's subject, HTML and text for this subscriber."""
    return render_email("digest", {
        "name": subscriber.name,
        "email": subscriber.email,
        "sections": sections,
        "article_count": sum(len(section.articles) for section in sections),
        "publisher_name": settings.PUBLISHER_NAME,
        "postal_address": settings.PUBLISHER_POSTAL_ADDRESS,
        "frequency": subscriber.frequency.value,
        "unsubscribe_url": links.unsubscribe_url(subscriber.id),
        "preferences_url": links.preferences_url(subscriber.id),
    })


def compose_digest(delivery: Delivery, subscriber: Subscriber, settings: Settings, now: datetime
                   ) -> OutgoingMessage:
    """The digest planned into this delivery's items."""
    session = object_session(delivery)
    assert session is not None
    items = session.scalars(
        select(DigestItem)
        .options(joinedload(DigestItem.article), joinedload(DigestItem.topic))
        .where(DigestItem.delivery_id == delivery.id)
    ).all()
    rendered = render_digest(subscriber, digest_sections((i.topic, i.article) for i in items), settings)
    return _outgoing(delivery, subscriber, settings, now, rendered, settings.DIGEST_MAIL_FROM,
                     [("List-Id", list_id(settings))])


def _outgoing(delivery: Delivery, subscriber: Subscriber, settings: Settings, now: datetime,
              rendered: RenderedEmail, mail_from: str, stream_headers: list[tuple[str, str]]
              ) -> OutgoingMessage:
    """The headers every message of ours carries, around a rendered email."""
    return OutgoingMessage(
        mail_from=mail_from,
        to=subscriber.email,
        subject=rendered.subject,
        text=rendered.text,
        html=rendered.html,
        message_id=stable_message_id(delivery, settings),
        date=now,
        extra_headers=(
            *list_unsubscribe_headers(subscriber.id),
            *stream_headers,
            ("Auto-Submitted", "auto-generated"),
            *feedback_id_header(delivery, settings),
        ),
    )


def list_id(settings: Settings) -> str:
    """RFC 2919 List-Id of the digest stream: a phrase and a dot-atom on our domain."""
    phrase = settings.PUBLISHER_NAME.replace('"', "").replace("\\", "")
    return f'"{phrase} digest" <digest.{settings.mail_domain}>'
