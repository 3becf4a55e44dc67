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

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import (
    CTE,
    ColumnElement,
    Select,
    Subquery,
    and_,
    exists,
    func,
    literal,
    select,
    true,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, aliased

from service.config import Settings
from service.ledger_statistics import LedgerStatistics
from service.mail.compose import digest_sections, render_digest
from service.mail.rendering import RenderedEmail
from service.models import (
    LARGEST_ID,
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
from service.suppressions import canonical_address


@dataclass(frozen=True)
class DigestFilter:
    """Limits for 'send now': only this frequency and/or subscribers of this topic."""

    frequency: Frequency | None = None
    topic_id: int | None = None


@dataclass(frozen=True, eq=False)  # SQL expressions do not compare as values
class ReaderBatch:
    """The readers of ``group`` with ids in (after, last]: a planning batch, or one reader."""

    group: ColumnElement[bool]
    after: int
    last: int

    @classmethod
    def of(cls, subscriber_id: int) -> ReaderBatch:
        return cls(true(), subscriber_id - 1, subscriber_id)

    def readers(self) -> ColumnElement[bool]:
        return and_(self.group, Subscriber.id > self.after, Subscriber.id <= self.last)

    def their_subscriptions(self) -> ColumnElement[bool]:
        """The same id range on subscriptions, which PostgreSQL does not infer from the join.

        Without it the planner found the subscriptions of each candidate
        article's topic among all readers, not the batch's: every batch read
        all subscriptions, so planning grew with the square of the readers.
        """
        return and_(Subscription.subscriber_id > self.after, Subscription.subscriber_id <= self.last)


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
    statistics = LedgerStatistics(session, settings.DIGEST_PLAN_BATCH_SIZE)
    for timezone, frequency in groups:
        if only.frequency is not None and frequency != only.frequency:
            continue
        period = current_period(frequency, now, timezone, settings.DIGEST_SEND_HOUR,
                                settings.DIGEST_WEEKLY_DAY)
        if not (period.due or force):
            continue
        group = _reader_group(timezone, frequency, only)
        after = 0
        while True:
            batch_ids = _next_subscriber_batch(session, group, after, settings.DIGEST_PLAN_BATCH_SIZE)
            if not batch_ids:
                break
            batch = ReaderBatch(group, after, batch_ids[-1])
            after = batch_ids[-1]
            delivery_ids = _plan_batch(session, settings, batch, period.key, now)
            session.commit()
            statistics.planned(len(delivery_ids))
            yield PlannedBatch(period.key, len(batch_ids), delivery_ids)


def digest_selection(settings: Settings, batch: ReaderBatch, cutoff: datetime) -> Select:
    """(subscriber_id, article_id, topic_id, published_at) of what each of the batch's readers
    would get now."""
    readers = batch.readers()
    # The articles of each topic that anyone in the batch could still get: a few
    # dozen rows, found once per batch rather than through the tags per reader.
    oldest_start = select(func.min(func.coalesce(Subscriber.digest_since, Subscriber.confirmed_at))) \
        .where(readers).scalar_subquery()
    candidates = (
        select(topic_tags.c.topic_id, Article.id.label("article_id"), Article.published_at)
        .join(Topic, and_(Topic.id == topic_tags.c.topic_id, Topic.retired_at.is_(None)))
        .join(article_tags, article_tags.c.tag_id == topic_tags.c.tag_id)
        .join(Article, Article.id == article_tags.c.article_id)
        .where(Article.published_at <= cutoff, Article.published_at > oldest_start)
        .distinct()
        .cte("candidates")
    )
    matches = (
        select(
            Subscriber.id.label("subscriber_id"),
            candidates.c.article_id,
            # An article in several of a reader's topics is shown once, under one of them.
            func.min(Subscription.topic_id).label("topic_id"),
            candidates.c.published_at,
        )
        .select_from(Subscriber)
        .join(Subscription, and_(Subscription.subscriber_id == Subscriber.id, batch.their_subscriptions(),
                                 Subscription.status == SubscriptionStatus.CONFIRMED))
        .join(candidates, candidates.c.topic_id == Subscription.topic_id)
        .where(
            readers,
            Subscriber.status == SubscriberStatus.CONFIRMED,
            Subscriber.suppressed_at.is_(None),
            candidates.c.published_at > func.coalesce(Subscriber.digest_since, Subscriber.confirmed_at),
            candidates.c.published_at >= Subscription.confirmed_at,
            ~exists().where(DigestItem.subscriber_id == Subscriber.id,
                            DigestItem.article_id == candidates.c.article_id),
        )
        .group_by(Subscriber.id, candidates.c.article_id, candidates.c.published_at)
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


def _reader_group(timezone: str, frequency: Frequency, only: DigestFilter) -> ColumnElement[bool]:
    """The confirmed readers of one time zone and frequency (and topic, when given)."""
    group = and_(Subscriber.status == SubscriberStatus.CONFIRMED, Subscriber.suppressed_at.is_(None),
                 Subscriber.timezone == timezone, Subscriber.frequency == frequency)
    if only.topic_id is None:
        return group
    # An alias, so the selection's own join to subscriptions does not swallow this subquery's.
    of_topic = aliased(Subscription)
    return and_(group, exists().where(
        of_topic.subscriber_id == Subscriber.id, of_topic.topic_id == only.topic_id,
        of_topic.status == SubscriptionStatus.CONFIRMED))


def _next_subscriber_batch(session: Session, group: ColumnElement[bool], after: int, size: int) -> list[int]:
    return list(session.scalars(
        select(Subscriber.id).where(group, Subscriber.id > after).order_by(Subscriber.id).limit(size)))


def _plan_batch(session: Session, settings: Settings, batch: ReaderBatch, period: str,
                now: datetime) -> list[int]:
    """Plan one batch: its deliveries and their items; returns the new deliveries' ids.

    One delivery per subscriber with something new; the unique key makes a
    second planning of the same period (a duplicate beat) a no-op.
    """
    if session.get_bind().dialect.name == "postgresql":
        return _plan_batch_in_one_statement(session, settings, batch, period, now)
    return _plan_batch_in_steps(session, settings, batch, period, now)


_DELIVERY_COLUMNS = ["kind", "subscriber_id", "period", "state", "attempts", "created_at", "updated_at",
                     "next_attempt_at"]
_ITEM_COLUMNS = ["delivery_id", "subscriber_id", "article_id", "topic_id"]


def _new_delivery_rows(selection: Subquery | CTE, period: str, now: datetime) -> Select:
    return select(
        literal(DeliveryKind.DIGEST.value), selection.c.subscriber_id, literal(period),
        literal(DeliveryState.QUEUED.value), literal(0), literal(now, Delivery.created_at.type),
        literal(now, Delivery.updated_at.type), literal(now, Delivery.next_attempt_at.type),
    ).where(selection.c.subscriber_id.is_not(None)).distinct()  # SQLite needs a WHERE before ON CONFLICT


def _plan_batch_in_one_statement(session: Session, settings: Settings, batch: ReaderBatch,
                                 period: str, now: datetime) -> list[int]:
    """PostgreSQL: the selection is computed once and feeds the deliveries, their items and the
    readers' digest_since, in one statement (data-modifying CTEs)."""
    selection = digest_selection(settings, batch, now).cte("selection")
    new_deliveries = (
        postgresql.insert(Delivery).from_select(_DELIVERY_COLUMNS, _new_delivery_rows(selection, period, now))
        .on_conflict_do_nothing()
        .returning(Delivery.id, Delivery.subscriber_id)
        .cte("new_deliveries")
    )
    # Items only for the deliveries just created: an older delivery of this period may be on its way.
    new_items = postgresql.insert(DigestItem).from_select(_ITEM_COLUMNS, select(
        new_deliveries.c.id, selection.c.subscriber_id, selection.c.article_id, selection.c.topic_id,
    ).join(new_deliveries, new_deliveries.c.subscriber_id == selection.c.subscriber_id)
    ).on_conflict_do_nothing().cte("new_items")
    readers_planned = (
        update(Subscriber)
        .where(Subscriber.id.in_(select(new_deliveries.c.subscriber_id)))
        .values(digest_since=now)
        .cte("readers_planned")
    )
    return list(session.scalars(
        select(new_deliveries.c.id).order_by(new_deliveries.c.id).add_cte(new_items, readers_planned)))


def _plan_batch_in_steps(session: Session, settings: Settings, batch: ReaderBatch, period: str,
                         now: datetime) -> list[int]:
    """SQLite (no data-modifying CTEs): deliveries, then items, then digest_since."""
    selection = digest_selection(settings, batch, now).subquery("selection")
    session.execute(sqlite.insert(Delivery).from_select(
        _DELIVERY_COLUMNS, _new_delivery_rows(selection, period, now)).on_conflict_do_nothing())

    delivery = Delivery.__table__
    items = (
        select(delivery.c.id, selection.c.subscriber_id, selection.c.article_id, selection.c.topic_id)
        .join(delivery, and_(delivery.c.subscriber_id == selection.c.subscriber_id,
                             delivery.c.kind == DeliveryKind.DIGEST.value,
                             delivery.c.period == period))
        .where(~exists().where(DigestItem.delivery_id == delivery.c.id))
    )
    session.execute(sqlite.insert(DigestItem).from_select(_ITEM_COLUMNS, items).on_conflict_do_nothing())

    planned_now = list(session.scalars(
        select(Delivery.id).where(
            Delivery.subscriber_id.in_(select(Subscriber.id).where(batch.readers())),
            Delivery.kind == DeliveryKind.DIGEST, Delivery.period == period, Delivery.created_at == now,
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


def preview_digest(session: Session, settings: Settings, subscriber: Subscriber,
                   now: datetime | None = None) -> RenderedEmail | None:
    """What this subscriber's digest would hold if planned now; None if nothing is new.

    Reads only: nothing is planned, sent or marked as received.
    """
    rows = session.execute(digest_selection(settings, ReaderBatch.of(subscriber.id), now or utcnow())).all()
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
        return session.get(Subscriber, subscriber_id) if 0 < subscriber_id <= LARGEST_ID else None
    if email:
        return session.scalars(
            select(Subscriber).where(Subscriber.email == canonical_address(email))
        ).one_or_none()
    return None
