"""Turn a ledger row into a finished message: who, which template, which links."""

from __future__ import annotations

import hmac
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.utils import parseaddr
from functools import lru_cache
from typing import Any, Protocol

from sqlalchemy import inspect as sa_inspect
from sqlalchemy import select
from sqlalchemy.orm import Session

from service.config import Settings
from service.mail.message import OutgoingMessage, make_message_id
from service.mail.personalise import (
    DigestKey,
    PersonalCopies,
    PersonalCopy,
    Reader,
    TemplateCache,
    confirmation_fields,
    content_key,
    digest_context,
    personal_fields,
)
from service.mail.rendering import RenderedEmail, render_email, templates_version
from service.models import (
    Article,
    DeliveryKind,
    DigestItem,
    Frequency,
    Subscriber,
    SubscriptionStatus,
    Topic,
)
from service.value_lists import among


class LedgerEntry(Protocol):
    """What composing needs of a delivery row (an ORM Delivery or a claimed row)."""

    id: int
    kind: DeliveryKind
    period: str | None
    created_at: datetime


def list_unsubscribe_headers(url: str) -> list[tuple[str, str]]:
    """RFC 8058 one-click unsubscribe: one HTTPS URL in angle brackets, plus the POST hint.

    ``url`` is the very link the body shows: signed once, as a second signing a
    second later would give another token.
    """
    return [
        ("List-Unsubscribe", f"<{url}>"),
        ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"),
    ]


def compose_confirmation(
    delivery: LedgerEntry, subscriber: Subscriber, settings: Settings, now: datetime
) -> OutgoingMessage:
    """The double opt-in email, listing the topics still waiting for confirmation, rendered for
    this reader alone (a batch's ConfirmationComposer renders each content once)."""
    # Signed once: the link in the body and the List-Unsubscribe header must be the same URL.
    fields = confirmation_fields(_reader(subscriber))
    rendered = _render_confirmation(settings, pending_topics(subscriber), fields)
    return _outgoing(delivery, subscriber, settings, now, rendered, settings.MAIL_FROM, [],
                     fields["unsubscribe_url"])


def pending_topics(subscriber: Subscriber) -> list[Topic]:
    """The topics a confirmation lists, by name."""
    return sorted((s.topic for s in subscriber.subscriptions if s.status == SubscriptionStatus.PENDING),
                  key=lambda topic: topic.name)


def _render_confirmation(settings: Settings, topics: list[Topic], fields: Mapping[str, str]
                         ) -> RenderedEmail:
    return render_email("confirmation", {
        "name": fields["name"] or None,
        "email": fields["email"],
        "topics": topics,
        "confirm_url": fields["confirm_url"],
        "unsubscribe_url": fields["unsubscribe_url"],
        "preferences_url": fields["preferences_url"],
        **_confirmation_settings(settings),
    })


def _confirmation_settings(settings: Settings) -> dict[str, Any]:
    """The settings a confirmation shows."""
    return {"expires_in_days": max(1, settings.CONFIRM_TOKEN_MAX_AGE // 86400),
            "sender_name": _display_name(settings.MAIL_FROM)}


def feedback_id_header(delivery: LedgerEntry, settings: Settings) -> list[tuple[str, str]]:
    """Gmail's Feedback-ID (campaign:kind:sender), when FEEDBACK_ID_SENDER is set."""
    if not settings.FEEDBACK_ID_SENDER:
        return []
    campaign = (delivery.period or "transactional").replace(":", "-")
    return [("Feedback-ID", f"{campaign}:{delivery.kind.value}:{settings.FEEDBACK_ID_SENDER}")]


def stable_message_id(delivery: LedgerEntry, settings: Settings) -> str:
    """The same Message-ID on every attempt, so a duplicate can be recognised.

    It ends in an HMAC of the delivery, so a forged bounce cannot guess the
    Message-ID of someone else's mail to pin a bounce on them.
    """
    created_at = delivery.created_at
    local = f"{delivery.kind.value}.{delivery.id}.{_stamp(created_at, created_at.utcoffset())}"
    signature = hmac.digest(settings.SECRET_KEY.encode(), local.encode(), "sha256").hex()[:12]
    return make_message_id(settings.mail_domain, f"{local}.{signature}")


@lru_cache(maxsize=64)
def _stamp(created_at: datetime, utcoffset: timedelta | None) -> str:
    # A fan-out's deliveries are planned in a few statements: their creation times repeat.
    # The offset is part of the key, as equal instants in two zones have two stamps.
    return f"{created_at:%Y%m%d%H%M%S}"


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
    return _render_digest(settings, subscriber.frequency, sections, personal_fields(_reader(subscriber)))


def _render_digest(settings: Settings, frequency: Frequency, sections: list[DigestSection],
                   fields: Mapping[str, str]) -> RenderedEmail:
    return render_email("digest", digest_context(settings, frequency, sections, fields))


def _reader(subscriber: Subscriber) -> Reader:
    return Reader(subscriber.id, subscriber.email, subscriber.name, subscriber.frequency,
                  subscriber.token_epoch)


class MessageComposer:
    """Composes the messages of one batch of deliveries, digests and confirmations alike."""

    def __init__(self, session: Session, settings: Settings) -> None:
        self.digests = DigestComposer(session, settings)
        self.confirmations = ConfirmationComposer(settings)

    def load(self, deliveries: Iterable[LedgerEntry]) -> None:
        """Fetch what the digests among these deliveries show."""
        self.digests.load(d.id for d in deliveries if d.kind == DeliveryKind.DIGEST)

    def compose(self, delivery: LedgerEntry, subscriber: Subscriber, now: datetime) -> OutgoingMessage:
        if delivery.kind == DeliveryKind.DIGEST:
            return self.digests.compose(delivery, subscriber, now)
        return self.confirmations.compose(delivery, subscriber, now)


# Whether the reader gave a name, and the pending topics' ids in the order the email lists them.
ConfirmationKey = tuple[bool, tuple[int, ...]]


class ConfirmationComposer:
    """Composes the confirmations of one batch: each distinct content (whether the reader
    gave a name, the pending topics) rendered once, or not at all when an earlier batch
    of this process made the same content. Under a stream of form posts most readers
    ask for the same few topics, and rendering was half of what a confirmation cost."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._topics: dict[int, Topic] = {}
        self._templates_version: tuple[tuple[str, int, int], ...] | None = None
        self.copies = PersonalCopies(self._render_content, self._content_version,
                                     SHARED_CONFIRMATION_TEMPLATES, confirmation_fields)

    def compose(self, delivery: LedgerEntry, subscriber: Subscriber, now: datetime) -> OutgoingMessage:
        reader = _reader(subscriber)
        pending = pending_topics(subscriber)
        self._topics.update((topic.id, topic) for topic in pending)
        fields = confirmation_fields(reader)
        key: ConfirmationKey = (bool(reader.name), tuple(topic.id for topic in pending))
        rendered = self.copies.copy_for(reader, key, fields)
        return _outgoing(delivery, subscriber, self._settings, now, rendered, self._settings.MAIL_FROM, [],
                         fields["unsubscribe_url"])

    def _content_version(self, key: ConfirmationKey) -> Hashable:
        """Everything a render of this content reads but the key: the topics' columns, the
        settings the email shows, and the template files. The topics are the ones ``compose``
        has just noted for this key's reader."""
        _, topic_ids = key
        if self._templates_version is None:
            self._templates_version = templates_version()
        shown = tuple(_confirmation_settings(self._settings).items())
        return _column_values(self._topics[i] for i in topic_ids), shown, self._templates_version

    def _render_content(self, reader: Reader, key: ConfirmationKey, fields: Mapping[str, str]
                        ) -> RenderedEmail:
        _, topic_ids = key
        return _render_confirmation(self._settings, [self._topics[i] for i in topic_ids], fields)


class DigestComposer:
    """Composes the digests of one batch of deliveries: their items in one query,
    each distinct content rendered once (see service.mail.personalise), or not at
    all when an earlier batch of this process made the same content."""

    def __init__(self, session: Session, settings: Settings) -> None:
        self._session = session
        self._settings = settings
        self._contents: dict[int, list[tuple[int, int]]] = {}
        self._templates_version: tuple[tuple[str, int, int], ...] | None = None
        self.copies = PersonalCopies(self._render_content, self._content_version, SHARED_TEMPLATES)

    def load(self, delivery_ids: Iterable[int]) -> None:
        """Fetch the (topic, article) pairs planned into these deliveries."""
        ids = list(delivery_ids)
        if not ids:
            return
        for delivery_id, topic_id, article_id in self._session.execute(
            select(DigestItem.delivery_id, DigestItem.topic_id, DigestItem.article_id)
            .where(among(self._session, DigestItem.delivery_id, ids))
        ):
            self._contents.setdefault(delivery_id, []).append((topic_id, article_id))

    def compose(self, delivery: LedgerEntry, subscriber: Subscriber, now: datetime) -> OutgoingMessage:
        reader = _reader(subscriber)
        pairs = self._contents.pop(delivery.id, [])
        fields = personal_fields(reader)
        rendered = self.copies.copy_for(reader, content_key(reader, pairs), fields)
        return _outgoing(delivery, subscriber, self._settings, now, rendered, self._settings.DIGEST_MAIL_FROM,
                         [("List-Id", list_id(self._settings))], fields["unsubscribe_url"])

    def _content_version(self, key: DigestKey) -> Hashable:
        """Everything a render of this content reads but the key: the topics' and articles'
        columns, the settings the template shows, and the template files."""
        topics, articles = self._topics_and_articles(key)
        if self._templates_version is None:
            self._templates_version = templates_version()
        shown_settings = (self._settings.PUBLISHER_NAME, self._settings.PUBLISHER_POSTAL_ADDRESS)
        return (_column_values(topics.values()), _column_values(articles.values()), shown_settings,
                self._templates_version)

    def _topics_and_articles(self, key: DigestKey) -> tuple[dict[int, Topic], dict[int, Article]]:
        _, _, sections_key = key
        topic_ids = [topic_id for topic_id, _ in sections_key]
        article_ids = [article_id for _, ids in sections_key for article_id in ids]
        topics = {t.id: t for t in self._session.scalars(select(Topic).where(Topic.id.in_(topic_ids)))}
        articles = {a.id: a for a in self._session.scalars(
            select(Article).where(Article.id.in_(article_ids)))}
        return topics, articles

    def _render_content(self, reader: Reader, key: DigestKey, fields: Mapping[str, str]) -> RenderedEmail:
        frequency, _, sections_key = key
        topics, articles = self._topics_and_articles(key)
        sections = digest_sections((topics[topic_id], articles[article_id])
                                   for topic_id, ids in sections_key for article_id in ids)
        return _render_digest(self._settings, frequency, sections, fields)


# Templates of contents, shared by the batches this process sends.
SHARED_TEMPLATES = TemplateCache()
SHARED_CONFIRMATION_TEMPLATES = TemplateCache()


def _column_values(rows: Iterable[Topic | Article]) -> tuple[tuple[Any, ...], ...]:
    return tuple(tuple(getattr(row, column.key) for column in sa_inspect(type(row)).column_attrs)
                 for row in sorted(rows, key=lambda row: row.id))


def _outgoing(delivery: LedgerEntry, subscriber: Subscriber, settings: Settings, now: datetime,
              rendered: RenderedEmail | PersonalCopy, mail_from: str, stream_headers: list[tuple[str, str]],
              unsubscribe_url: str) -> OutgoingMessage:
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
            *list_unsubscribe_headers(unsubscribe_url),
            *stream_headers,
            ("Auto-Submitted", "auto-generated"),
            *feedback_id_header(delivery, settings),
        ),
    )


def list_id(settings: Settings) -> str:
    """RFC 2919 List-Id of the digest stream: a phrase and a dot-atom on our domain."""
    phrase = settings.PUBLISHER_NAME.replace('"', "").replace("\\", "")
    return f'"{phrase} digest" <digest.{settings.mail_domain}>'
