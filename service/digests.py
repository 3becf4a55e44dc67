"""Deciding who gets which articles: digest planning in set-based SQL.

For each confirmed subscriber whose period is due, one digest delivery per
period (a unique row), holding the new articles of all their topics: tagged
with one of the topic's tags, published after the subscriber's ``digest_since``
and after they confirmed that topic, and never an article they already got
(``digest_items`` is unique per subscriber and article). At most
DIGEST_MAX_ARTICLES_PER_TOPIC per topic and DIGEST_MAX_ARTICLES in all, newest
first. Nothing is planned for a subscriber with nothing new.

Subscribers are walked in id order in batches (keyset pagination); each batch
is a few INSERT ... SELECT statements and one transaction, so memory does not
grow with the number of subscribers.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Select, and_, exists, func, literal, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from service.config import Settings
from service.mail.compose import digest_sections, render_digest
from service.mail.rendering import RenderedEmail
from service.models import (
    Article,
    Delivery,
    DeliveryKind,
    DeliveryState,
    DigestItem,
    Frequency,
    Subscriber,
    SubscriberStatus,
    Subscription,
    SubscriptionStatus,
    Topic,
    article_tags,
    topic_tags,
    utcnow,
)
from service.schedule import current_period


@dataclass(frozen=True)
class DigestFilter:
    """Limits for 'send now': only this frequency and/or subscribers of this topic."""

    frequency: Frequency | None = None
    topic_id: int | None = None


@dataclass(frozen=True)
class PlannedBatch:
    period: str
    subscribers_seen: int
    delivery_ids: list[int]


def plan_digests(session: Session, settings: Settings, now: datetime | None = None, *,
                 force: bool = False, only: DigestFilter | None = None) -> Iterator[PlannedBatch]:
    """Plan the current period's digests, committing and yielding batch by batch.

    Without ``force`` only periods that are due are planned; with it (send now)
    every current period is. Running it again in the same period plans nothing
    more for subscribers who already have that period's digest.
    """
    now = now or utcnow()
    only = only or DigestFilter()
    groups = session.execute(
        select(Subscriber.timezone, Subscriber.frequency)
        .where(Subscriber.status == SubscriberStatus.CONFIRMED)
        .distinct()
        .order_by(Subscriber.timezone, Subscriber.frequency)
    ).all()
    for timezone, frequency in groups:
        if only.frequency is not None and frequency != only.frequency:
            continue
        period = current_period(frequency, now, timezone, settings.DIGEST_SEND_HOUR,
                                settings.DIGEST_WEEKLY_DAY)
        if not (period.due or force):
            continue
        after = 0
        while True:
            batch_ids = _next_subscriber_batch(session, timezone, frequency, only, after,
                                               settings.DIGEST_BATCH_SIZE)
            if not batch_ids:
                break
            after = batch_ids[-1]
            delivery_ids = _plan_batch(session, settings, batch_ids, period.key, now)
            session.commit()
            yield PlannedBatch(period.key, len(batch_ids), delivery_ids)


def digest_selection(settings: Settings, subscriber_ids: Sequence[int], cutoff: datetime) -> Select:
    """(subscriber_id, article_id, topic_id, published_at) of what each subscriber would get now."""
    matches = (
        select(
            Subscriber.id.label("subscriber_id"),
            Article.id.label("article_id"),
            # An article in several of a reader's topics is shown once, under one of them.
            func.min(Subscription.topic_id).label("topic_id"),
            Article.published_at.label("published_at"),
        )
        .select_from(Subscriber)
        .join(Subscription, and_(Subscription.subscriber_id == Subscriber.id,
                                 Subscription.status == SubscriptionStatus.CONFIRMED))
        .join(Topic, and_(Topic.id == Subscription.topic_id, Topic.retired_at.is_(None)))
        .join(topic_tags, topic_tags.c.topic_id == Subscription.topic_id)
        .join(article_tags, article_tags.c.tag_id == topic_tags.c.tag_id)
        .join(Article, Article.id == article_tags.c.article_id)
        .where(
            Subscriber.id.in_(subscriber_ids),
            Subscriber.status == SubscriberStatus.CONFIRMED,
            Subscriber.suppressed_at.is_(None),
            Article.published_at > func.coalesce(Subscriber.digest_since, Subscriber.confirmed_at),
            Article.published_at >= Subscription.confirmed_at,
            Article.published_at <= cutoff,
            ~exists().where(DigestItem.subscriber_id == Subscriber.id,
                            DigestItem.article_id == Article.id),
        )
        .group_by(Subscriber.id, Article.id, Article.published_at)
        .cte("matches")
    )
    newest_first = (matches.c.published_at.desc(), matches.c.article_id.desc())
    per_topic = select(
        matches,
        func.row_number().over(partition_by=(matches.c.subscriber_id, matches.c.topic_id),
                               order_by=newest_first).label("topic_rank"),
    ).cte("per_topic")
    overall = select(
        per_topic.c.subscriber_id, per_topic.c.article_id, per_topic.c.topic_id,
        per_topic.c.published_at,
        func.row_number().over(partition_by=per_topic.c.subscriber_id,
                               order_by=(per_topic.c.published_at.desc(),
                                         per_topic.c.article_id.desc())).label("overall_rank"),
    ).where(per_topic.c.topic_rank <= settings.DIGEST_MAX_ARTICLES_PER_TOPIC).cte("overall")
    return select(overall.c.subscriber_id, overall.c.article_id, overall.c.topic_id,
                  overall.c.published_at).where(overall.c.overall_rank <= settings.DIGEST_MAX_ARTICLES)


def _next_subscriber_batch(session: Session, timezone: str, frequency: Frequency, only: DigestFilter,
                           after: int, size: int) -> list[int]:
    query = (
        select(Subscriber.id)
        .where(Subscriber.status == SubscriberStatus.CONFIRMED, Subscriber.suppressed_at.is_(None),
               Subscriber.timezone == timezone, Subscriber.frequency == frequency, Subscriber.id > after)
        .order_by(Subscriber.id)
        .limit(size)
    )
    if only.topic_id is not None:
        query = query.where(exists().where(
            Subscription.subscriber_id == Subscriber.id, Subscription.topic_id == only.topic_id,
            Subscription.status == SubscriptionStatus.CONFIRMED))
    return list(session.scalars(query))


def _plan_batch(session: Session, settings: Settings, subscriber_ids: list[int], period: str,
                now: datetime) -> list[int]:
    selection = digest_selection(settings, subscriber_ids, now).subquery("selection")
    insert = _insert_ignoring_conflicts(session)

    # One delivery per subscriber with something new; the unique key makes a
    # second planning of the same period (a duplicate beat) a no-op.
    new_deliveries = select(
        literal(DeliveryKind.DIGEST.value), selection.c.subscriber_id, literal(period),
        literal(DeliveryState.QUEUED.value), literal(0), literal(now, Delivery.created_at.type),
        literal(now, Delivery.updated_at.type), literal(now, Delivery.next_attempt_at.type),
    ).where(selection.c.subscriber_id.is_not(None)).distinct()  # SQLite needs a WHERE before ON CONFLICT
    session.execute(insert(Delivery).from_select(
        ["kind", "subscriber_id", "period", "state", "attempts", "created_at", "updated_at",
         "next_attempt_at"], new_deliveries,
    ).on_conflict_do_nothing())

    # Items only for deliveries that have none yet, i.e. the ones just created: an
    # older delivery of this period may already be on its way.
    delivery = Delivery.__table__
    items = (
        select(delivery.c.id, selection.c.subscriber_id, selection.c.article_id, selection.c.topic_id)
        .join(delivery, and_(delivery.c.subscriber_id == selection.c.subscriber_id,
                             delivery.c.kind == DeliveryKind.DIGEST.value,
                             delivery.c.period == period))
        .where(~exists().where(DigestItem.delivery_id == delivery.c.id))
    )
    session.execute(insert(DigestItem).from_select(
        ["delivery_id", "subscriber_id", "article_id", "topic_id"], items,
    ).on_conflict_do_nothing())

    planned_now = list(session.scalars(
        select(Delivery.id).where(
            Delivery.subscriber_id.in_(subscriber_ids), Delivery.kind == DeliveryKind.DIGEST,
            Delivery.period == period, Delivery.created_at == now,
        ).order_by(Delivery.id)
    ))
    if planned_now:
        session.execute(
            update(Subscriber)
            .where(Subscriber.id.in_(select(Delivery.subscriber_id).where(Delivery.id.in_(planned_now))))
            .values(digest_since=now)
            .execution_options(synchronize_session=False)
        )
    return planned_now


def _insert_ignoring_conflicts(session: Session):  # type: ignore[no-untyped-def]
    """The dialect's INSERT, which knows ON CONFLICT DO NOTHING (PostgreSQL and SQLite)."""
    dialect = session.get_bind().dialect.name
    return postgresql.insert if dialect == "postgresql" else sqlite.insert


def preview_digest(session: Session, settings: Settings, subscriber: Subscriber,
                   now: datetime | None = None) -> RenderedEmail | None:
    """What this subscriber's digest would hold if planned now; None if nothing is new.

    Reads only: nothing is planned, sent or marked as received.
    """
    rows = session.execute(digest_selection(settings, [subscriber.id], now or utcnow())).all()
    if not rows:
        return None
    articles = {a.id: a for a in session.scalars(
        select(Article).where(Article.id.in_([row.article_id for row in rows])))}
    topics = {t.id: t for t in session.scalars(
        select(Topic).where(Topic.id.in_({row.topic_id for row in rows})))}
    sections = digest_sections((topics[row.topic_id], articles[row.article_id]) for row in rows)
    return render_digest(subscriber, sections, settings)


def find_subscriber(session: Session, email: str | None = None, subscriber_id: int | None = None
                    ) -> Subscriber | None:
    """Look a subscriber up by address (normalised as we store it) or by id."""
    if subscriber_id is not None:
        # Ids beyond the column's range cannot exist; the database would refuse the query.
        return session.get(Subscriber, subscriber_id) if 0 < subscriber_id < 2**31 else None
    if email:
        return session.scalars(
            select(Subscriber).where(Subscriber.email == email.strip().lower())
        ).one_or_none()
    return None
