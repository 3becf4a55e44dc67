"""What the admin overview page shows: per topic, readers by state and how many confirm;
the last digest runs and what became of their deliveries; recent bounces.

Every figure comes from one GROUP BY query (a handful in all, whatever the
number of topics or readers), so the page costs the same on a big list as on a
small one. Nothing here knows about HTML; the view renders these dataclasses.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import distinct, func, select
from sqlalchemy.orm import Session

from service.models import (
    Bounce,
    BounceKind,
    Delivery,
    DeliveryKind,
    DeliveryState,
    DigestItem,
    Subscriber,
    SubscriberStatus,
    Subscription,
    SubscriptionStatus,
    Topic,
    utcnow,
)

DIGEST_RUNS = 8  # the last digest periods shown
RECENT_BOUNCES = 20
BOUNCE_WINDOW = timedelta(days=30)
MAX_DIAGNOSTIC = 200  # the page shows the start of what the server said; the API has the rest


def _zeroes(states: type[SubscriptionStatus] | type[DeliveryState] | type[SubscriberStatus]
            | type[BounceKind]) -> dict[str, int]:
    """Every state with 0, so the page and its charts always list the same columns."""
    return {state.value: 0 for state in states}


@dataclass
class DigestRun:
    """The digest deliveries of one period (all topics, or those carrying one topic) by state."""

    period: str
    counts: dict[str, int] = field(default_factory=lambda: _zeroes(DeliveryState))

    @property
    def total(self) -> int:
        return sum(self.counts.values())


@dataclass
class TopicOverview:
    slug: str
    name: str
    retired: bool
    subscriptions: dict[str, int] = field(default_factory=lambda: _zeroes(SubscriptionStatus))
    # Subscriptions that were confirmed at some point, including those that left since.
    ever_confirmed: int = 0
    digest_runs: list[DigestRun] = field(default_factory=list)

    @property
    def requested(self) -> int:
        return sum(self.subscriptions.values())

    @property
    def confirmation_rate(self) -> float | None:
        """Share of the subscriptions asked for that were confirmed; None before the first."""
        return self.ever_confirmed / self.requested if self.requested else None


@dataclass(frozen=True)
class RecentBounce:
    received_at: datetime
    kind: str
    status: str | None
    diagnostic: str | None  # addresses in it were replaced when it was recorded
    delivery_kind: str | None
    period: str | None


@dataclass
class Overview:
    generated_at: datetime
    readers: dict[str, int]
    topics: list[TopicOverview]
    confirmations: dict[str, int]  # confirmation emails by delivery state
    digest_runs: list[DigestRun]  # newest first
    bounces_by_kind: dict[str, int]  # within BOUNCE_WINDOW
    recent_bounces: list[RecentBounce]
    bounce_window: timedelta = BOUNCE_WINDOW


def build_overview(session: Session, now: datetime | None = None, runs: int = DIGEST_RUNS,
                   bounces: int = RECENT_BOUNCES) -> Overview:
    """Everything the overview page shows, read in one go."""
    now = now or utcnow()
    periods = latest_digest_periods(session, runs)
    topics = topic_overviews(session, periods)
    return Overview(
        generated_at=now,
        readers=reader_counts(session),
        topics=topics,
        confirmations=confirmation_counts(session),
        digest_runs=digest_runs(session, periods),
        bounces_by_kind=bounce_counts(session, since=now - BOUNCE_WINDOW),
        recent_bounces=recent_bounces(session, bounces),
    )


def reader_counts(session: Session) -> dict[str, int]:
    counts = _zeroes(SubscriberStatus)
    for status, count in session.execute(
            select(Subscriber.status, func.count()).group_by(Subscriber.status)):
        counts[status.value] = count
    return counts


def latest_digest_periods(session: Session, limit: int = DIGEST_RUNS) -> list[str]:
    """The digest periods planned last, newest first (daily and weekly runs alike)."""
    return list(session.scalars(
        select(Delivery.period)
        .where(Delivery.kind == DeliveryKind.DIGEST, Delivery.period.is_not(None))
        .group_by(Delivery.period)
        .order_by(func.max(Delivery.created_at).desc(), Delivery.period.desc())
        .limit(limit)
    ))


def topic_overviews(session: Session, periods: list[str]) -> list[TopicOverview]:
    """Every topic, active ones first, with its subscriptions by state and its digest runs
    over ``periods``. Retired topics stay: their readers' history is still there."""
    topics = session.execute(
        select(Topic.id, Topic.slug, Topic.name, Topic.retired_at)
        .order_by(Topic.retired_at.is_not(None), Topic.name, Topic.slug)
    ).all()
    overviews = {row.id: TopicOverview(row.slug, row.name, row.retired_at is not None) for row in topics}
    for topic_id, status, count, confirmed in session.execute(
            select(Subscription.topic_id, Subscription.status, func.count(),
                   func.count(Subscription.confirmed_at))
            .group_by(Subscription.topic_id, Subscription.status)):
        overviews[topic_id].subscriptions[status.value] = count
        overviews[topic_id].ever_confirmed += confirmed
    for topic_id, runs in topic_digest_runs(session, periods).items():
        overviews[topic_id].digest_runs = runs
    return list(overviews.values())


def digest_runs(session: Session, periods: list[str]) -> list[DigestRun]:
    """All digest deliveries of each period by state, in the order of ``periods``."""
    runs = {period: DigestRun(period) for period in periods}
    if periods:
        for period, state, count in session.execute(
                select(Delivery.period, Delivery.state, func.count())
                .where(Delivery.kind == DeliveryKind.DIGEST, Delivery.period.in_(periods))
                .group_by(Delivery.period, Delivery.state)):
            runs[period].counts[state.value] = count
    return list(runs.values())


def topic_digest_runs(session: Session, periods: list[str]) -> dict[int, list[DigestRun]]:
    """Per topic, the digest deliveries of each period that carried at least one of its
    articles. One digest covers all of a reader's topics, so it counts under each of them."""
    if not periods:
        return {}
    found: dict[int, dict[str, DigestRun]] = {}
    for topic_id, period, state, count in session.execute(
            select(DigestItem.topic_id, Delivery.period, Delivery.state, func.count(distinct(Delivery.id)))
            .join(Delivery, Delivery.id == DigestItem.delivery_id)
            .where(Delivery.kind == DeliveryKind.DIGEST, Delivery.period.in_(periods))
            .group_by(DigestItem.topic_id, Delivery.period, Delivery.state)):
        runs = found.setdefault(topic_id, {})
        runs.setdefault(period, DigestRun(period)).counts[state.value] = count
    order = {period: index for index, period in enumerate(periods)}
    return {topic_id: sorted(runs.values(), key=lambda run: order[run.period])
            for topic_id, runs in found.items()}


def confirmation_counts(session: Session) -> dict[str, int]:
    counts = _zeroes(DeliveryState)
    for state, count in session.execute(
            select(Delivery.state, func.count())
            .where(Delivery.kind == DeliveryKind.CONFIRMATION).group_by(Delivery.state)):
        counts[state.value] = count
    return counts


def bounce_counts(session: Session, since: datetime) -> dict[str, int]:
    counts = _zeroes(BounceKind)
    for kind, count in session.execute(
            select(Bounce.kind, func.count()).where(Bounce.received_at >= since).group_by(Bounce.kind)):
        counts[kind.value] = count
    return counts


def recent_bounces(session: Session, limit: int = RECENT_BOUNCES) -> list[RecentBounce]:
    """The latest bounces and complaints, with the delivery they were about, never an address."""
    rows = session.execute(
        select(Bounce.received_at, Bounce.kind, Bounce.status, Bounce.diagnostic,
               Delivery.kind.label("delivery_kind"), Delivery.period)
        .outerjoin(Delivery, Delivery.id == Bounce.delivery_id)
        .order_by(Bounce.received_at.desc(), Bounce.id.desc())
        .limit(limit)
    ).all()
    return [RecentBounce(
        received_at=row.received_at, kind=row.kind.value, status=row.status,
        diagnostic=_shorten(row.diagnostic), period=row.period,
        delivery_kind=row.delivery_kind.value if row.delivery_kind else None,
    ) for row in rows]


def _shorten(text: str | None) -> str | None:
    if text is None or len(text) <= MAX_DIAGNOSTIC:
        return text
    return text[:MAX_DIAGNOSTIC - 1] + "…"
