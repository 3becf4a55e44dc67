"""The database schema as SQLAlchemy 2.0 typed models.

Subscriber is a person (one row per normalised address); Subscription links a
subscriber to a Topic with its own state; Delivery is the ledger row of one
message we mean to send; CapturedEmail holds mail the embedded outbox stored
instead of sending.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime

from sqlalchemy import (
    Column,
    DateTime,
    Enum,
    ForeignKey,
    Index,
    LargeBinary,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from service.extensions import db

# Every id is an INTEGER column: a larger number names no row, and the database refuses it in a query.
LARGEST_ID = 2**31 - 1


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on PostgreSQL and SQLite alike.

    SQLite has no time zones and hands back naive values; this type stores UTC
    and always returns aware datetimes, so comparisons never mix the two.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect):  # type: ignore[override]
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTCDateTime column")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect):  # type: ignore[override]
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _enum(enum_class: type[enum.Enum], name: str) -> Enum:
    return Enum(
        enum_class,
        name=name,
        native_enum=False,
        create_constraint=True,
        length=20,
        values_callable=lambda members: [m.value for m in members],
    )


class SubscriberStatus(enum.StrEnum):
    PENDING = "pending"
    CONFIRMED = "confirmed"
    UNSUBSCRIBED = "unsubscribed"


class SubscriptionStatus(enum.StrEnum):
    PENDING = "pending"
    CONFIRMED = "confirmed"
    UNSUBSCRIBED = "unsubscribed"


class Frequency(enum.StrEnum):
    DAILY = "daily"
    WEEKLY = "weekly"


class DeliveryKind(enum.StrEnum):
    CONFIRMATION = "confirmation"
    DIGEST = "digest"


class DeliveryState(enum.StrEnum):
    QUEUED = "queued"
    SENDING = "sending"
    SENT = "sent"
    DEFERRED = "deferred"
    FAILED = "failed"
    SUPPRESSED = "suppressed"
    BOUNCED = "bounced"  # accepted by the relay, then bounced back (hard bounce or complaint)


class Topic(db.Model):
    __tablename__ = "topics"

    id: Mapped[int] = mapped_column(primary_key=True)
    slug: Mapped[str] = mapped_column(String(80), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text, default="")
    default_frequency: Mapped[Frequency | None] = mapped_column(_enum(Frequency, "frequency"))
    retired_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    tags: Mapped[list[Tag]] = relationship(secondary=lambda: topic_tags, order_by=lambda: Tag.name)

    @property
    def is_active(self) -> bool:
        return self.retired_at is None


class Tag(db.Model):
    """A normalised label; topics and articles meet through shared tags."""

    __tablename__ = "tags"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)


topic_tags = Table(
    "topic_tags",
    db.metadata,
    Column("topic_id", ForeignKey("topics.id", ondelete="CASCADE"), primary_key=True),
    Column("tag_id", ForeignKey("tags.id", ondelete="CASCADE"), primary_key=True, index=True),
)

article_tags = Table(
    "article_tags",
    db.metadata,
    Column("article_id", ForeignKey("articles.id", ondelete="CASCADE"), primary_key=True),
    Column("tag_id", ForeignKey("tags.id", ondelete="CASCADE"), primary_key=True, index=True),
)


class Feed(db.Model):
    """An RSS or Atom feed polled for articles; a topic's feed tags its entries for it."""

    __tablename__ = "feeds"

    id: Mapped[int] = mapped_column(primary_key=True)
    url: Mapped[str] = mapped_column(String(2048), unique=True)
    topic_id: Mapped[int | None] = mapped_column(ForeignKey("topics.id", ondelete="SET NULL"))
    etag: Mapped[str | None] = mapped_column(String(500))
    last_modified: Mapped[str | None] = mapped_column(String(100))
    last_polled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    topic: Mapped[Topic | None] = relationship()


class Article(db.Model):
    __tablename__ = "articles"
    __table_args__ = (Index("ix_articles_published_at", "published_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    external_id: Mapped[str | None] = mapped_column(String(500), unique=True)
    url: Mapped[str] = mapped_column(String(2048), unique=True)
    title: Mapped[str] = mapped_column(String(500))
    summary: Mapped[str] = mapped_column(Text, default="")
    author: Mapped[str | None] = mapped_column(String(200))
    image_url: Mapped[str | None] = mapped_column(String(2048))
    published_at: Mapped[datetime] = mapped_column(UTCDateTime)
    feed_id: Mapped[int | None] = mapped_column(ForeignKey("feeds.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    tags: Mapped[list[Tag]] = relationship(secondary=lambda: article_tags, order_by=lambda: Tag.name)


class Subscriber(db.Model):
    __tablename__ = "subscribers"
    # AUTOINCREMENT on SQLite: an id is never reused, so an old link or task
    # can never point at a newer row.
    __table_args__ = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    name: Mapped[str | None] = mapped_column(String(200))
    frequency: Mapped[Frequency] = mapped_column(_enum(Frequency, "frequency"))
    status: Mapped[SubscriberStatus] = mapped_column(
        _enum(SubscriberStatus, "subscriber_status"), default=SubscriberStatus.PENDING
    )
    # Bumped whenever a confirm link must stop working (unsubscribe, address change),
    # so tokens carry ids and this number rather than the address itself.
    token_epoch: Mapped[int] = mapped_column(default=1)
    last_delivery_error: Mapped[str | None] = mapped_column(Text)
    soft_bounce_count: Mapped[int] = mapped_column(default=0, server_default="0")
    # Set while the address is on the suppression list, so planning can skip it in SQL.
    suppressed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # When we last queued a confirmation email; cleared when the reader confirms or
    # leaves. Repeated form posts inside CONFIRMATION_RESEND_SECONDS send nothing more.
    confirmation_requested_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Confirmation emails queued while pending; capped so a form cannot flood an inbox.
    pending_confirmations: Mapped[int] = mapped_column(default=0, server_default="0")
    # IANA zone name; the digest goes out at the send hour in this zone.
    timezone: Mapped[str] = mapped_column(String(64), default="UTC", server_default="UTC")
    # Digests carry articles published after this moment: set at confirmation and
    # moved forward each time a digest is planned, so nobody gets a flood of old news.
    digest_since: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    confirmed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    unsubscribed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    subscriptions: Mapped[list[Subscription]] = relationship(
        back_populates="subscriber", cascade="all, delete-orphan"
    )


class Subscription(db.Model):
    __tablename__ = "subscriptions"
    __table_args__ = (UniqueConstraint("subscriber_id", "topic_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    subscriber_id: Mapped[int] = mapped_column(ForeignKey("subscribers.id", ondelete="CASCADE"))
    topic_id: Mapped[int] = mapped_column(ForeignKey("topics.id"), index=True)
    status: Mapped[SubscriptionStatus] = mapped_column(
        _enum(SubscriptionStatus, "subscription_status"), default=SubscriptionStatus.PENDING
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    confirmed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    unsubscribed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    subscriber: Mapped[Subscriber] = relationship(back_populates="subscriptions")
    topic: Mapped[Topic] = relationship()


class Delivery(db.Model):
    """One message we mean to send, and what became of it."""

    __tablename__ = "deliveries"
    __table_args__ = (
        Index("ix_deliveries_state_next_attempt_at", "state", "next_attempt_at"),
        # One digest per subscriber and period, however often planning runs.
        # (NULL periods, as confirmations have, never collide.)
        UniqueConstraint("subscriber_id", "kind", "period", name="uq_deliveries_subscriber_period"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[DeliveryKind] = mapped_column(_enum(DeliveryKind, "delivery_kind"))
    # Indexed by the unique key below, which starts with it.
    subscriber_id: Mapped[int | None] = mapped_column(ForeignKey("subscribers.id", ondelete="SET NULL"))
    state: Mapped[DeliveryState] = mapped_column(
        _enum(DeliveryState, "delivery_state"), default=DeliveryState.QUEUED
    )
    period: Mapped[str | None] = mapped_column(String(40))
    attempts: Mapped[int] = mapped_column(default=0)
    message_id: Mapped[str | None] = mapped_column(String(255))
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    subscriber: Mapped[Subscriber | None] = relationship()


class DigestItem(db.Model):
    """An article planned into a subscriber's digest, under one of their topics.

    The primary key (subscriber, article) is the guarantee that an article never
    reaches the same person twice.

    This is the busiest table: a digest of 20 articles is 20 rows, two million
    for 100,000 readers. Its rows are written only by digest planning, from a
    selection that joins the subscriber, article and topic in the same
    statement, and articles and topics are never deleted (topics are retired);
    erasure deletes a reader's items itself. The delivery is written by the same
    planning step, and deliveries are never deleted. So none of the four is a
    foreign key: checking them row by row was more than half the cost of
    planning (docs/benchmarks.md).
    """

    __tablename__ = "digest_items"

    subscriber_id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    article_id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    delivery_id: Mapped[int] = mapped_column(index=True)
    topic_id: Mapped[int]

    article: Mapped[Article] = relationship(primaryjoin="foreign(DigestItem.article_id) == Article.id")
    topic: Mapped[Topic] = relationship(primaryjoin="foreign(DigestItem.topic_id) == Topic.id")


class SuppressionReason(enum.StrEnum):
    HARD_BOUNCE = "hard_bounce"
    SOFT_BOUNCES = "soft_bounces"
    COMPLAINT = "complaint"
    MANUAL = "manual"
    ERASED = "erased"


class Suppression(db.Model):
    """An address we must not mail, kept as a hash so it outlives the subscriber."""

    __tablename__ = "suppressions"

    id: Mapped[int] = mapped_column(primary_key=True)
    email_hash: Mapped[str] = mapped_column(String(64), unique=True)
    reason: Mapped[SuppressionReason] = mapped_column(_enum(SuppressionReason, "suppression_reason"))
    detail: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class BounceKind(enum.StrEnum):
    HARD = "hard"
    SOFT = "soft"
    COMPLAINT = "complaint"
    POLICY = "policy"


class Bounce(db.Model):
    """A bounce or complaint that came back for one of our messages."""

    __tablename__ = "bounces"
    __table_args__ = (
        # The same bounce of the same delivery is recorded once, however often it is posted.
        Index("uq_bounces_delivery_kind", "delivery_id", "kind", unique=True,
              postgresql_where=text("delivery_id IS NOT NULL"), sqlite_where=text("delivery_id IS NOT NULL")),
        Index("ix_bounces_kind_received_at", "kind", "received_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[BounceKind] = mapped_column(_enum(BounceKind, "bounce_kind"))
    email_hash: Mapped[str] = mapped_column(String(64), index=True)
    delivery_id: Mapped[int | None] = mapped_column(ForeignKey("deliveries.id", ondelete="SET NULL"))
    subscriber_id: Mapped[int | None] = mapped_column(ForeignKey("subscribers.id", ondelete="SET NULL"))
    status: Mapped[str | None] = mapped_column(String(20))  # enhanced status code, e.g. 5.1.1
    diagnostic: Mapped[str | None] = mapped_column(Text)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class SendingPause(db.Model):
    """While a pause is open (not resumed), workers defer mail instead of sending it."""

    __tablename__ = "sending_pauses"

    id: Mapped[int] = mapped_column(primary_key=True)
    reason: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    resumed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class ConsentRecord(db.Model):
    """Proof of consent for one subscription: when, where and how it was given and withdrawn."""

    __tablename__ = "consent_records"

    id: Mapped[int] = mapped_column(primary_key=True)
    subscription_id: Mapped[int] = mapped_column(
        ForeignKey("subscriptions.id", ondelete="CASCADE"), index=True)
    requested_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    source: Mapped[str] = mapped_column(String(20))  # form, json, preferences, admin
    page_url: Mapped[str | None] = mapped_column(String(2048))
    ip_address: Mapped[str | None] = mapped_column(String(64))
    user_agent: Mapped[str | None] = mapped_column(String(512))
    consent_text_version: Mapped[str] = mapped_column(String(40))
    confirmed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    withdrawn_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    withdrawn_via: Mapped[str | None] = mapped_column(String(40))  # one-click, preferences, complaint ...

    subscription: Mapped[Subscription] = relationship()


class ApiKey(db.Model):
    """A named admin API key; only its hash is stored, and it can be revoked."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class CapturedEmail(db.Model):
    """A message the embedded outbox kept instead of handing it to SMTP."""

    __tablename__ = "captured_emails"

    id: Mapped[int] = mapped_column(primary_key=True)
    message_id: Mapped[str] = mapped_column(String(255))
    mail_from: Mapped[str] = mapped_column(String(320))
    recipients: Mapped[str] = mapped_column(Text)
    subject: Mapped[str] = mapped_column(Text)
    raw: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
