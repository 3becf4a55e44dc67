"""The subscription lifecycle, called directly with a session (no HTTP, no Celery)."""

import threading
from datetime import timedelta

import pytest
from sqlalchemy import event, func, select

from service.consent import ConsentContext
from service.extensions import db
from service.models import (
    ConsentRecord,
    Delivery,
    DeliveryKind,
    DeliveryState,
    Frequency,
    Subscriber,
    SubscriberStatus,
    Subscription,
    SubscriptionStatus,
    Topic,
    utcnow,
)
from service.subscriptions import (
    InvalidLink,
    InvalidSubscription,
    PreferencesUpdate,
    SubscriptionRequest,
    confirm_subscription,
    normalise_email,
    request_new_confirmation,
    subscribe,
    subscribe_in_steps,
    unsubscribe,
    update_preferences,
)
from service.suppressions import address_hash, canonical_address


def _subscribe(session, email="reader@example.com", topics=("marvel-news",), **fields):
    outcome = subscribe(session, SubscriptionRequest(email, list(topics), **fields), "weekly")
    session.commit()
    return outcome


def _count(session, model) -> int:
    return session.scalar(select(func.count()).select_from(model))


def _statuses(subscriber: Subscriber) -> dict[str, SubscriptionStatus]:
    return {s.topic.slug: s.status for s in subscriber.subscriptions}


def test_subscribing_stores_a_pending_subscription_and_one_confirmation(session):
    outcome = _subscribe(session, name="Peggy", frequency="daily")
    subscriber = session.get(Subscriber, outcome.subscriber_id)
    assert subscriber.status == SubscriberStatus.PENDING
    assert subscriber.name == "Peggy"
    assert subscriber.frequency.value == "daily"
    assert _statuses(subscriber) == {"marvel-news": SubscriptionStatus.PENDING}
    delivery = session.get(Delivery, outcome.delivery_ids[0])
    assert (delivery.kind, delivery.state) == (DeliveryKind.CONFIRMATION, DeliveryState.QUEUED)


def test_the_address_is_stored_in_one_normal_form(session):
    first = _subscribe(session, email="  Peggy.Carter@EXAMPLE.com ")
    second = _subscribe(session, email="peggy.carter@example.com")
    assert first.subscriber_id == second.subscriber_id
    assert session.get(Subscriber, first.subscriber_id).email == "peggy.carter@example.com"


def test_repeated_submits_within_the_resend_window_queue_one_confirmation(session):
    first = _subscribe(session)
    second = _subscribe(session)
    assert len(first.delivery_ids) == 1
    assert second.delivery_ids == []
    assert _count(session, Delivery) == 1


def test_a_pending_reader_posting_again_after_the_window_gets_a_new_email(session):
    first = _subscribe(session)
    subscriber = session.get(Subscriber, first.subscriber_id)
    subscriber.confirmation_requested_at = utcnow() - timedelta(hours=2)
    session.commit()
    assert len(_subscribe(session).delivery_ids) == 1
    assert _count(session, Delivery) == 2


def test_a_topic_defaults_the_frequency_when_the_reader_gives_none(session):
    topic = session.scalars(select(Topic).where(Topic.slug == "tv-news")).one()
    topic.default_frequency = Frequency.DAILY
    session.commit()
    outcome = _subscribe(session, topics=["tv-news"])
    assert session.get(Subscriber, outcome.subscriber_id).frequency == Frequency.DAILY


@pytest.mark.parametrize(
    ("request_fields", "field"),
    [
        ({"email": "not-an-address"}, "email"),
        ({"email": ""}, "email"),
        ({"email": "a" * 250 + "@example.com"}, "email"),
        ({"email": "reader@example.com", "topics": ["no-such-topic"]}, "topics"),
        ({"email": "reader@example.com", "topics": []}, "topics"),
        ({"email": "reader@example.com", "topics": [f"t{i}" for i in range(30)]}, "topics"),
        ({"email": "reader@example.com", "frequency": "hourly"}, "frequency"),
        ({"email": "reader@example.com", "name": "x" * 201}, "name"),
        ({"email": "reader@example.com", "name": "Evil\r\nBcc: x@example.com"}, "name"),
    ],
)
def test_bad_input_names_the_field_and_writes_nothing(session, request_fields, field):
    fields = {"topics": ["marvel-news"], **request_fields}
    with pytest.raises(InvalidSubscription) as caught:
        subscribe(session, SubscriptionRequest(fields.pop("email"), fields.pop("topics"), **fields),
                  "weekly")
    session.rollback()
    assert field in caught.value.errors
    assert _count(session, Subscriber) == 0
    assert _count(session, Delivery) == 0


def test_every_bad_field_is_reported_at_once(session):
    with pytest.raises(InvalidSubscription) as caught:
        subscribe(session, SubscriptionRequest("nope", ["nope"], frequency="hourly"), "weekly")
    assert set(caught.value.errors) == {"email", "topics", "frequency"}


def test_an_international_domain_is_stored_in_the_ascii_spelling_smtp_takes():
    assert normalise_email("Reader@Bücher.example") == "reader@xn--bcher-kva.example"
    assert normalise_email("reader@xn--BCHER-kva.example") == "reader@xn--bcher-kva.example"


def test_lookups_and_hashes_find_an_international_domain_in_either_spelling():
    assert canonical_address(" Reader@Bücher.example ") == "reader@xn--bcher-kva.example"
    assert address_hash("reader@bücher.example") == address_hash("READER@xn--bcher-kva.example")
    assert canonical_address(" Not An Address ") == "not an address"  # lookups only trim text that is none


@pytest.mark.parametrize("address", ["jürgen@example.com", "用户@例子.广告", "🦸@example.com"])
def test_a_local_part_outside_ascii_is_refused_not_stored_undeliverable(address):
    # Sending to it needs SMTPUTF8 from every server on the way; we would store it and never mail it.
    with pytest.raises(InvalidSubscription) as caught:
        normalise_email(address)
    assert "before the @-sign" in caught.value.errors["email"]


def test_confirming_confirms_the_reader_and_every_pending_topic(session):
    outcome = _subscribe(session, topics=["marvel-news", "tv-news"])
    subscriber = session.get(Subscriber, outcome.subscriber_id)
    confirm_subscription(session, subscriber.id, subscriber.token_epoch)
    session.commit()
    assert subscriber.status == SubscriberStatus.CONFIRMED
    assert subscriber.confirmed_at is not None
    assert set(_statuses(subscriber).values()) == {SubscriptionStatus.CONFIRMED}


def test_confirming_twice_is_harmless(session):
    outcome = _subscribe(session)
    subscriber = session.get(Subscriber, outcome.subscriber_id)
    confirm_subscription(session, subscriber.id, subscriber.token_epoch)
    session.commit()
    confirmed_at = subscriber.confirmed_at
    confirm_subscription(session, subscriber.id, subscriber.token_epoch)
    session.commit()
    assert subscriber.status == SubscriberStatus.CONFIRMED
    assert subscriber.confirmed_at == confirmed_at


def test_a_confirm_link_from_before_unsubscribing_no_longer_works(session):
    outcome = _subscribe(session)
    subscriber = session.get(Subscriber, outcome.subscriber_id)
    old_epoch = subscriber.token_epoch
    unsubscribe(session, subscriber.id)
    session.commit()
    with pytest.raises(InvalidLink):
        confirm_subscription(session, subscriber.id, old_epoch)
    # Subscribing again sends a new link that does work; the old one stays dead.
    _subscribe(session)
    with pytest.raises(InvalidLink):
        confirm_subscription(session, subscriber.id, old_epoch)
    confirm_subscription(session, subscriber.id, subscriber.token_epoch)
    assert subscriber.status == SubscriberStatus.CONFIRMED


def test_confirming_an_erased_subscriber_is_an_invalid_link(session):
    with pytest.raises(InvalidLink):
        confirm_subscription(session, 987654, 1)


def test_a_confirmed_reader_resubmitting_the_form_gets_no_mail(session):
    outcome = _subscribe(session)
    subscriber = session.get(Subscriber, outcome.subscriber_id)
    confirm_subscription(session, subscriber.id, subscriber.token_epoch)
    session.commit()
    again = _subscribe(session)
    assert again.delivery_ids == []
    assert subscriber.status == SubscriberStatus.CONFIRMED


def test_a_confirmed_reader_adding_a_topic_must_confirm_that_topic(session):
    outcome = _subscribe(session)
    subscriber = session.get(Subscriber, outcome.subscriber_id)
    confirm_subscription(session, subscriber.id, subscriber.token_epoch)
    session.query(Delivery).update({"state": DeliveryState.SENT})
    session.commit()
    added = _subscribe(session, topics=["tv-news"])
    assert len(added.delivery_ids) == 1
    assert _statuses(subscriber) == {
        "marvel-news": SubscriptionStatus.CONFIRMED,
        "tv-news": SubscriptionStatus.PENDING,
    }


def test_a_form_post_cannot_rename_a_confirmed_reader(session):
    outcome = _subscribe(session, name="Peggy", frequency="weekly")
    subscriber = session.get(Subscriber, outcome.subscriber_id)
    confirm_subscription(session, subscriber.id, subscriber.token_epoch)
    session.commit()
    _subscribe(session, name="Someone Else", frequency="daily")
    assert subscriber.name == "Peggy"
    assert subscriber.frequency.value == "weekly"


def test_unsubscribing_leaves_every_topic_and_is_harmless_to_repeat(session):
    outcome = _subscribe(session, topics=["marvel-news", "tv-news"])
    unsubscribe(session, outcome.subscriber_id)
    session.commit()
    subscriber = unsubscribe(session, outcome.subscriber_id)
    session.commit()
    assert subscriber.status == SubscriberStatus.UNSUBSCRIBED
    assert set(_statuses(subscriber).values()) == {SubscriptionStatus.UNSUBSCRIBED}


def test_unsubscribing_someone_already_erased_is_not_an_error(session):
    assert unsubscribe(session, 123456) is None


def test_preferences_set_exactly_the_chosen_topics(session):
    outcome = _subscribe(session, topics=["marvel-news", "tv-news"])
    subscriber = session.get(Subscriber, outcome.subscriber_id)
    confirm_subscription(session, subscriber.id, subscriber.token_epoch)
    update_preferences(session, subscriber.id,
                       PreferencesUpdate(["movie-news", "tv-news"], "daily", "Peggy Carter"))
    session.commit()
    assert _statuses(subscriber) == {
        "marvel-news": SubscriptionStatus.UNSUBSCRIBED,
        "tv-news": SubscriptionStatus.CONFIRMED,
        "movie-news": SubscriptionStatus.CONFIRMED,
    }
    assert (subscriber.frequency.value, subscriber.name) == ("daily", "Peggy Carter")


def test_preferences_of_a_pending_reader_stay_pending(session):
    outcome = _subscribe(session)
    update_preferences(session, outcome.subscriber_id, PreferencesUpdate(["tv-news"], "weekly", None))
    session.commit()
    subscriber = session.get(Subscriber, outcome.subscriber_id)
    assert subscriber.status == SubscriberStatus.PENDING
    assert _statuses(subscriber)["tv-news"] == SubscriptionStatus.PENDING


def test_choosing_no_topics_in_preferences_unsubscribes(session):
    outcome = _subscribe(session)
    subscriber = update_preferences(session, outcome.subscriber_id, PreferencesUpdate([], "weekly", None))
    assert subscriber.status == SubscriberStatus.UNSUBSCRIBED


def test_an_unsubscribed_reader_can_come_back_through_preferences(session):
    outcome = _subscribe(session)
    unsubscribe(session, outcome.subscriber_id)
    subscriber = update_preferences(session, outcome.subscriber_id,
                                    PreferencesUpdate(["marvel-news"], "weekly", None))
    session.commit()
    assert subscriber.status == SubscriberStatus.CONFIRMED
    assert _statuses(subscriber) == {"marvel-news": SubscriptionStatus.CONFIRMED}


def test_preferences_refuse_unknown_topics_and_frequencies(session):
    outcome = _subscribe(session)
    with pytest.raises(InvalidSubscription) as caught:
        update_preferences(session, outcome.subscriber_id, PreferencesUpdate(["nope"], "hourly", None))
    assert set(caught.value.errors) == {"topics", "frequency"}


def test_a_new_confirmation_is_queued_only_for_a_pending_reader_with_a_current_link(session):
    outcome = _subscribe(session)
    subscriber = session.get(Subscriber, outcome.subscriber_id)
    assert request_new_confirmation(session, subscriber.id, subscriber.token_epoch) is None  # too soon
    subscriber.confirmation_requested_at = utcnow() - timedelta(days=8)
    assert request_new_confirmation(session, subscriber.id, subscriber.token_epoch + 1) is None
    assert request_new_confirmation(session, subscriber.id, subscriber.token_epoch) is not None
    session.commit()
    assert _count(session, Delivery) == 2


def test_two_posts_racing_for_a_new_address_make_one_reader_and_neither_fails(stack, session):
    """Both transactions insert the same new address at once; the loser's INSERT … ON CONFLICT
    waits for the winner, does nothing, and the select finds the winner's row."""
    if stack.name != "postgres":
        pytest.skip("SQLite runs one writer at a time: there is no race to lose")
    barrier = threading.Barrier(2)
    outcomes: list[object] = []

    def post() -> None:
        with stack.app.app_context():
            try:
                barrier.wait()
                subscribe(db.session, SubscriptionRequest("racer@example.com", ["marvel-news"]), "weekly")
                db.session.commit()
                outcomes.append("ok")
            except Exception as error:  # the test reports whatever went wrong
                outcomes.append(error)
            finally:
                db.session.remove()

    threads = [threading.Thread(target=post) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert outcomes == ["ok", "ok"]
    assert session.scalar(select(func.count()).select_from(Subscriber)
                          .where(Subscriber.email == "racer@example.com")) == 1


def _rows_of(session, subscriber_id: int) -> dict[str, object]:
    """Everything a subscribe post stored for one reader, without ids, addresses and times."""
    def values(obj, *skip: str) -> dict[str, object]:
        return {column.key: getattr(obj, column.key) for column in obj.__table__.columns
                if column.key not in {"id", "email", "subscriber_id", "subscription_id", *skip}
                and not column.key.endswith("_at")}

    subscriber = session.get(Subscriber, subscriber_id)
    subscriptions = sorted(subscriber.subscriptions, key=lambda s: s.topic_id)
    records = [session.scalars(select(ConsentRecord).where(ConsentRecord.subscription_id == s.id)).all()
               for s in subscriptions]
    deliveries = session.scalars(select(Delivery).where(Delivery.subscriber_id == subscriber_id)).all()
    return {
        "subscriber": values(subscriber),
        "set_times": sorted(c.key for c in Subscriber.__table__.columns
                            if c.key.endswith("_at") and getattr(subscriber, c.key) is not None),
        "subscriptions": [values(s) for s in subscriptions],
        "consent": [[values(r) | {"requested": r.requested_at is not None} for r in rs] for rs in records],
        "deliveries": [values(d) | {"due": d.next_attempt_at is not None} for d in deliveries],
    }


@pytest.mark.parametrize("alone", [False, True], ids=["in-the-session", "committed-alone"])
@pytest.mark.parametrize("frequency", [None, "daily"])
def test_a_new_reader_is_stored_alike_in_one_statement_and_in_steps(stack, session, frequency, alone):
    """On PostgreSQL a new address takes the one-statement path (service.new_readers), through
    the session or, committing alone, on the driver's cursor; it must leave exactly the rows
    the step-by-step path leaves. (On SQLite every call takes the steps.)"""
    session.scalars(select(Topic).where(Topic.slug == "tv-news")).one().default_frequency = Frequency.DAILY
    session.commit()
    consent = ConsentContext(source="form", text_version="v1", page_url="https://p.example/" + "x" * 3000,
                             ip_address="192.0.2.1", user_agent="Agent " * 200)
    fields = {"name": "Peggy", "frequency": frequency, "timezone": "Europe/Berlin", "consent": consent}
    topics = ["Marvel-News", "tv-news", "marvel-news"]
    statements: list[str] = []
    engine = session.get_bind()
    record = lambda conn, cursor, statement, *rest: statements.append(statement)  # noqa: E731
    event.listen(engine, "before_cursor_execute", record)
    try:
        fast = subscribe(session, SubscriptionRequest("fast@example.com", topics, **fields), "weekly",
                         commit_new_reader=alone)
    finally:
        event.remove(engine, "before_cursor_execute", record)
    if stack.name == "postgres":
        # The whole post, topics included, in one statement; alone, below SQLAlchemy's engine.
        assert len(statements) == (0 if alone else 1), statements
    steps = subscribe_in_steps(session, SubscriptionRequest("steps@example.com", topics, **fields), "weekly")
    session.commit()
    assert len(fast.delivery_ids) == len(steps.delivery_ids) == 1
    fast_rows, step_rows = _rows_of(session, fast.subscriber_id), _rows_of(session, steps.subscriber_id)
    assert fast_rows == step_rows
    assert fast_rows["subscriber"]["frequency"] == Frequency.DAILY  # given, or tv-news's default
    assert len(fast_rows["subscriptions"]) == 2
    assert fast_rows["consent"][0][0]["page_url"] == consent.page_url[:2048]


def test_a_new_readers_statement_commits_itself_only_when_asked_and_nothing_is_open(stack, session):
    """Alone, the one statement needs no BEGIN and COMMIT; otherwise it is part of the caller's
    transaction, and the pooled connection comes back out of autocommit."""
    if stack.name != "postgres":
        pytest.skip("the one-statement path is PostgreSQL's")

    def count(email: str) -> int:
        return session.scalar(select(func.count()).select_from(Subscriber).where(Subscriber.email == email))

    session.commit()
    alone = subscribe(session, SubscriptionRequest("alone@example.com", ["marvel-news"]), "weekly",
                      commit_new_reader=True)
    with session.get_bind().connect() as connection:  # the last one returned: the pool is LIFO
        assert connection.connection.dbapi_connection.autocommit is False
    session.rollback()
    assert session.get(Subscriber, alone.subscriber_id).email == "alone@example.com"
    session.commit()
    subscribe(session, SubscriptionRequest("unasked@example.com", ["marvel-news"]), "weekly")
    session.rollback()
    session.execute(select(Topic.id)).all()  # the caller's transaction is open now
    subscribe(session, SubscriptionRequest("joined@example.com", ["marvel-news"]), "weekly",
              commit_new_reader=True)
    session.rollback()
    assert count("unasked@example.com") == count("joined@example.com") == 0


def test_a_retired_topic_is_refused_and_nothing_is_stored(session):
    session.scalars(select(Topic).where(Topic.slug == "tv-news")).one().retired_at = utcnow()
    session.commit()
    with pytest.raises(InvalidSubscription) as caught:
        subscribe(session, SubscriptionRequest("reader@example.com", ["marvel-news", "tv-news"]), "weekly")
    session.rollback()
    assert caught.value.errors == {"topics": "Unknown topic: tv-news."}
    assert [_count(session, model) for model in (Subscriber, Subscription, Delivery)] == [0, 0, 0]
