"""Digest planning (service.digests) on the real databases, with explicit clocks."""

import dataclasses
import logging
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from service.articles import ArticleInput, ingest_articles
from service.config import get_settings
from service.digests import DigestFilter, find_subscriber, plan_digests, preview_digest
from service.models import (
    Delivery,
    DeliveryKind,
    DigestItem,
    Frequency,
    Subscriber,
    SuppressionReason,
    Topic,
)
from service.subscriptions import (
    PreferencesUpdate,
    SubscriptionRequest,
    confirm_subscription,
    subscribe,
    unsubscribe,
    update_preferences,
)
from service.suppressions import suppress, unsuppress
from service.topics import retire_topic

CONFIRMED = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)  # a Friday
MONDAY_9 = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
TUESDAY_9 = MONDAY_9 + timedelta(days=1)


@pytest.fixture
def settings(session):
    return get_settings()


def reader(session, email, topics, frequency="daily", timezone="UTC", confirm=True) -> Subscriber:
    outcome = subscribe(session, SubscriptionRequest(email, topics, frequency=frequency), "weekly")
    subscriber = session.get(Subscriber, outcome.subscriber_id)
    subscriber.timezone = timezone
    if confirm:
        confirm_subscription(session, subscriber.id, subscriber.token_epoch)
        # As if they had confirmed last Friday.
        subscriber.confirmed_at = subscriber.digest_since = CONFIRMED
        for subscription in subscriber.subscriptions:
            subscription.confirmed_at = CONFIRMED
    session.commit()
    return subscriber


def article(session, title, tags, published_at, **fields) -> int:
    slug = title.lower().replace(" ", "-")
    [result] = ingest_articles(session, [ArticleInput(
        title=title, url=f"https://news.example.com/{slug}", published_at=published_at,
        tags=tags, **fields)])
    session.commit()
    return result.article_id


def plan(session, settings, now, force=False, only=None) -> list[int]:
    batches = plan_digests(session, settings, now, force=force, only=only or DigestFilter())
    return [d for batch in batches
            for d in batch.delivery_ids]


def digest_of(session, subscriber) -> dict[str, list[str]]:
    """topic slug -> article titles (newest first) of the subscriber's latest digest."""
    delivery = session.scalars(select(Delivery).where(
        Delivery.subscriber_id == subscriber.id, Delivery.kind == DeliveryKind.DIGEST,
    ).order_by(Delivery.id.desc())).first()
    assert delivery is not None, f"no digest for {subscriber.email}"
    items = session.scalars(select(DigestItem).where(DigestItem.delivery_id == delivery.id)).all()
    grouped: dict[str, list] = {}
    for item in sorted(items, key=lambda i: i.article.published_at, reverse=True):
        grouped.setdefault(item.topic.slug, []).append(item.article.title)
    return grouped


def digests_count(session) -> int:
    return session.scalar(select(func.count()).select_from(Delivery).where(
        Delivery.kind == DeliveryKind.DIGEST))


def test_each_reader_gets_exactly_the_new_articles_of_their_topics_grouped(session, settings):
    peggy = reader(session, "peggy@example.com", ["marvel-news", "movie-news"])
    tony = reader(session, "tony@example.com", ["tv-news"])
    article(session, "Atwell joins MI7", ["Hayley Atwell", "Tom Cruise"], CONFIRMED + timedelta(hours=1))
    article(session, "Train stunt", ["Mission Impossible"], CONFIRMED + timedelta(hours=2))
    article(session, "What If season 2", ["What If", "MCU"], CONFIRMED + timedelta(hours=3))
    article(session, "Gardening tips", ["gardening"], CONFIRMED + timedelta(hours=4))

    assert len(plan(session, settings, MONDAY_9)) == 2
    # An article in two of Peggy's topics appears once; the lowest topic id gets it.
    assert digest_of(session, peggy) == {
        "marvel-news": ["What If season 2", "Atwell joins MI7"],
        "movie-news": ["Train stunt"],
    }
    assert digest_of(session, tony) == {"tv-news": ["What If season 2"]}


def test_planning_again_in_the_same_period_plans_nothing_more(session, settings):
    reader(session, "peggy@example.com", ["marvel-news"])
    article(session, "One", ["marvel"], CONFIRMED + timedelta(hours=1))
    assert len(plan(session, settings, MONDAY_9)) == 1
    article(session, "Two", ["marvel"], MONDAY_9 + timedelta(minutes=5))
    assert plan(session, settings, MONDAY_9 + timedelta(minutes=10)) == []
    assert plan(session, settings, MONDAY_9 + timedelta(minutes=10), force=True) == []
    assert digests_count(session) == 1


def test_the_next_period_carries_only_what_is_new_and_never_an_article_twice(session, settings):
    peggy = reader(session, "peggy@example.com", ["marvel-news"])
    article(session, "One", ["marvel"], CONFIRMED + timedelta(hours=1))
    plan(session, settings, MONDAY_9)
    article(session, "Two", ["marvel"], MONDAY_9 + timedelta(hours=2))
    assert len(plan(session, settings, TUESDAY_9)) == 1
    assert digest_of(session, peggy) == {"marvel-news": ["Two"]}


def test_nothing_is_planned_when_nothing_is_new(session, settings):
    reader(session, "peggy@example.com", ["marvel-news"])
    article(session, "Old news", ["marvel"], CONFIRMED - timedelta(days=3))
    assert plan(session, settings, MONDAY_9) == []
    assert digests_count(session) == 0


def test_a_reader_who_just_confirmed_gets_no_flood_of_old_articles(session, settings):
    for day in range(1, 20):
        article(session, f"Old {day}", ["marvel"], CONFIRMED - timedelta(days=day))
    peggy = reader(session, "peggy@example.com", ["marvel-news"])
    article(session, "Fresh", ["marvel"], CONFIRMED + timedelta(hours=1))
    plan(session, settings, MONDAY_9)
    assert digest_of(session, peggy) == {"marvel-news": ["Fresh"]}


def test_a_topic_added_later_brings_only_its_articles_from_then_on(session, settings):
    peggy = reader(session, "peggy@example.com", ["marvel-news"])
    article(session, "Older TV", ["tv"], CONFIRMED + timedelta(hours=1))
    # Peggy adds TV News on Sunday.
    update_preferences(session, peggy.id, PreferencesUpdate(["marvel-news", "tv-news"], "daily", None))
    tv = next(s for s in peggy.subscriptions if s.topic.slug == "tv-news")
    tv.confirmed_at = CONFIRMED + timedelta(days=2)
    session.commit()
    article(session, "Newer TV", ["tv"], CONFIRMED + timedelta(days=2, hours=1))
    plan(session, settings, MONDAY_9)
    assert digest_of(session, peggy) == {"tv-news": ["Newer TV"]}


def test_no_digest_for_unconfirmed_or_unsubscribed_readers(session, settings):
    reader(session, "pending@example.com", ["marvel-news"], confirm=False)
    gone = reader(session, "gone@example.com", ["marvel-news"])
    unsubscribe(session, gone.id)
    session.commit()
    article(session, "News", ["marvel"], CONFIRMED + timedelta(hours=1))
    assert plan(session, settings, MONDAY_9, force=True) == []


def test_digests_are_not_due_before_the_send_hour_unless_forced(session, settings):
    reader(session, "peggy@example.com", ["marvel-news"])
    article(session, "News", ["marvel"], CONFIRMED + timedelta(hours=1))
    early = MONDAY_9.replace(hour=settings.DIGEST_SEND_HOUR - 1)
    assert plan(session, settings, early) == []
    assert len(plan(session, settings, early, force=True)) == 1


def test_weekly_readers_get_one_digest_a_week(session, settings):
    weekly = reader(session, "weekly@example.com", ["marvel-news"], frequency="weekly")
    article(session, "Friday news", ["marvel"], CONFIRMED + timedelta(hours=1))
    assert len(plan(session, settings, MONDAY_9)) == 1
    article(session, "Monday news", ["marvel"], MONDAY_9 + timedelta(hours=1))
    assert plan(session, settings, TUESDAY_9) == []  # same ISO week
    assert len(plan(session, settings, MONDAY_9 + timedelta(days=7))) == 1
    assert digest_of(session, weekly) == {"marvel-news": ["Monday news"]}


def test_the_send_hour_is_local_to_the_reader(session, settings):
    reader(session, "auckland@example.com", ["marvel-news"], timezone="Pacific/Auckland")
    reader(session, "la@example.com", ["marvel-news"], timezone="America/Los_Angeles")
    article(session, "News", ["marvel"], CONFIRMED + timedelta(hours=1))
    # 09:00 UTC Monday: 22:00 in Auckland (due), 01:00 in Los Angeles (not yet).
    planned = plan(session, settings, MONDAY_9)
    assert [session.get(Delivery, d).subscriber.email for d in planned] == ["auckland@example.com"]


def test_articles_are_capped_per_topic_and_in_all_newest_first(session, settings):
    capped = dataclasses.replace(settings, DIGEST_MAX_ARTICLES_PER_TOPIC=3, DIGEST_MAX_ARTICLES=4)
    peggy = reader(session, "peggy@example.com", ["marvel-news", "tv-news"])
    for n in range(6):
        article(session, f"Marvel {n}", ["marvel"], CONFIRMED + timedelta(hours=n + 1))
        article(session, f"TV {n}", ["tv"], CONFIRMED + timedelta(hours=n + 1, minutes=30))
    plan(session, capped, MONDAY_9)
    assert digest_of(session, peggy) == {
        "marvel-news": ["Marvel 5", "Marvel 4"],
        "tv-news": ["TV 5", "TV 4"],
    }


def test_a_retired_topic_is_left_out_of_digests(session, settings):
    peggy = reader(session, "peggy@example.com", ["marvel-news", "tv-news"])
    article(session, "Marvel", ["marvel"], CONFIRMED + timedelta(hours=1))
    article(session, "TV", ["tv"], CONFIRMED + timedelta(hours=1))
    retire_topic(session, "tv-news")
    session.commit()
    plan(session, settings, MONDAY_9)
    assert digest_of(session, peggy) == {"marvel-news": ["Marvel"]}


def test_send_now_can_be_limited_to_a_frequency_or_a_topic(session, settings):
    reader(session, "daily@example.com", ["marvel-news"], frequency="daily")
    reader(session, "weekly@example.com", ["tv-news"], frequency="weekly")
    article(session, "Both", ["marvel", "tv"], CONFIRMED + timedelta(hours=1))
    tv = session.scalars(select(Topic).where(Topic.slug == "tv-news")).one()
    by_topic = plan(session, settings, MONDAY_9, force=True, only=DigestFilter(topic_id=tv.id))
    assert [session.get(Delivery, d).subscriber.email for d in by_topic] == ["weekly@example.com"]
    by_frequency = plan(session, settings, MONDAY_9, force=True,
                        only=DigestFilter(frequency=Frequency.DAILY))
    assert [session.get(Delivery, d).subscriber.email for d in by_frequency] == ["daily@example.com"]


def test_planning_walks_subscribers_in_batches(session, settings):
    small_batches = dataclasses.replace(settings, DIGEST_PLAN_BATCH_SIZE=2)
    for n in range(5):
        reader(session, f"reader{n}@example.com", ["marvel-news"])
    article(session, "News", ["marvel"], CONFIRMED + timedelta(hours=1))
    batches = list(plan_digests(session, small_batches, MONDAY_9))
    assert [b.subscribers_seen for b in batches] == [2, 2, 1]
    assert sum(len(b.delivery_ids) for b in batches) == 5


def _last_analysed(session) -> datetime | None:
    session.commit()  # statistics views keep one snapshot per transaction
    return session.scalar(text("SELECT last_analyze FROM pg_stat_user_tables WHERE relname = 'deliveries'"))


def _postgres_only(session) -> None:
    if session.get_bind().dialect.name != "postgresql":
        pytest.skip("a PostgreSQL planner concern")


def test_postgres_statistics_see_a_large_send_before_its_first_batch_goes_out(session, settings):
    """Stale statistics made every claim read all queued rows (docs/benchmarks.md)."""
    _postgres_only(session)
    small_batches = dataclasses.replace(settings, DIGEST_PLAN_BATCH_SIZE=2)
    for n in range(3):
        reader(session, f"reader{n}@example.com", ["marvel-news"])
    article(session, "News", ["marvel"], CONFIRMED + timedelta(hours=1))
    started = session.scalar(select(func.clock_timestamp()))
    session.commit()

    batches = plan_digests(session, small_batches, MONDAY_9)
    next(batches)  # two planned: the threshold (a batch's size) is reached
    analysed = _last_analysed(session)
    assert analysed is not None and analysed >= started
    common_states = session.scalar(text(
        "SELECT most_common_vals::text FROM pg_stats WHERE tablename = 'deliveries' AND attname = 'state'"))
    assert "queued" in common_states
    assert sum(len(b.delivery_ids) for b in batches) == 1
    assert _last_analysed(session) == analysed  # once per planning run, not per batch


def test_postgres_statistics_are_left_to_autovacuum_for_a_small_send(session, settings):
    _postgres_only(session)
    for n in range(3):
        reader(session, f"reader{n}@example.com", ["marvel-news"])
    article(session, "News", ["marvel"], CONFIRMED + timedelta(hours=1))
    before = _last_analysed(session)
    assert len(plan(session, dataclasses.replace(settings, DIGEST_PLAN_BATCH_SIZE=10), MONDAY_9)) == 3
    assert _last_analysed(session) == before


def test_a_role_that_cannot_analyse_the_ledger_is_told_and_planning_goes_on(session, settings, caplog):
    _postgres_only(session)
    reader(session, "reader@example.com", ["marvel-news"])
    article(session, "News", ["marvel"], CONFIRMED + timedelta(hours=1))
    # Roles belong to the whole server: one per test database, and whatever a killed run left dropped.
    guest = "guest_of_" + session.scalar(text("SELECT current_database()"))
    _drop_role(session, guest)
    session.execute(text(f"CREATE ROLE {guest}"))
    session.execute(text(f"GRANT ALL ON ALL TABLES IN SCHEMA public TO {guest}"))
    session.execute(text(f"GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO {guest}"))
    session.commit()
    # A connection of its own, never handed back to the pool with the role still set.
    connection = session.get_bind().connect()
    try:
        connection.execute(text(f"SET ROLE {guest}"))
        connection.commit()
        with Session(bind=connection) as as_guest, \
                caplog.at_level(logging.WARNING, logger="service.ledger_statistics"):
            planned = plan(as_guest, dataclasses.replace(settings, DIGEST_PLAN_BATCH_SIZE=1), MONDAY_9)
        assert len(planned) == 1
        assert "cannot analyse" in caplog.text
    finally:
        connection.invalidate()
        connection.close()
        _drop_role(session, guest)


def _drop_role(session, role: str) -> None:
    if session.scalar(text("SELECT count(*) FROM pg_roles WHERE rolname = :role"), {"role": role}):
        session.execute(text(f"DROP OWNED BY {role}"))  # its grants in this database
        session.execute(text(f"DROP ROLE {role}"))
    session.commit()


def test_the_preview_shows_the_next_digest_and_plans_nothing(session, settings):
    peggy = reader(session, "peggy@example.com", ["marvel-news"])
    assert preview_digest(session, settings, peggy, MONDAY_9) is None
    article(session, "<script>alert(1)</script> Atwell", ["marvel"], CONFIRMED + timedelta(hours=1),
            summary="A look behind the scenes.", author="Tyler Pisapia")
    rendered = preview_digest(session, settings, peggy, MONDAY_9)
    assert "Marvel News" in rendered.subject
    assert "&lt;script&gt;alert(1)&lt;/script&gt; Atwell" in rendered.html
    assert "<script>" not in rendered.html
    assert "Tyler Pisapia" in rendered.text
    assert digests_count(session) == 0
    assert find_subscriber(session, email=" Peggy@Example.com ") == peggy


def test_a_suppressed_reader_gets_no_digest_planned_until_unsuppressed(session, settings):
    peggy = reader(session, "peggy@example.com", ["marvel-news"])
    article(session, "News", ["marvel"], CONFIRMED + timedelta(hours=1))
    suppress(session, "Peggy@Example.com", SuppressionReason.HARD_BOUNCE)
    session.commit()
    assert peggy.suppressed_at is not None
    assert plan(session, settings, MONDAY_9, force=True) == []
    unsuppress(session, "peggy@example.com")
    session.commit()
    assert len(plan(session, settings, MONDAY_9, force=True)) == 1
