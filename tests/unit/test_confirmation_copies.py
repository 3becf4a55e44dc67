"""Confirmations rendered once per content and personalised per reader (ConfirmationComposer)."""

import dataclasses
import time
from datetime import UTC, datetime

import pytest

from service import links
from service.config import get_settings
from service.deliveries import ClaimedDelivery
from service.mail.compose import SHARED_CONFIRMATION_TEMPLATES, ConfirmationComposer, compose_confirmation
from service.mail.rendering import RenderedEmail, render_email
from service.models import DeliveryKind, Frequency, Subscriber, Subscription, SubscriptionStatus, Topic

NOW = datetime(2026, 11, 25, 9, tzinfo=UTC)
MARVEL = Topic(id=1, slug="marvel-news", name="Marvel News", description="")
TV = Topic(id=2, slug="tv-news", name="TV <News> & \"more\"", description="")
MOVIES = Topic(id=3, slug="movie-news", name="Movie News", description="")


def _reader(reader_id: int, email: str, name: str | None, pending: list[Topic],
            confirmed: tuple[Topic, ...] = ()) -> Subscriber:
    reader = Subscriber(id=reader_id, email=email, name=name, frequency=Frequency.DAILY,
                        token_epoch=reader_id % 3)
    reader.subscriptions = [
        *(Subscription(topic=topic, status=SubscriptionStatus.PENDING) for topic in pending),
        *(Subscription(topic=topic, status=SubscriptionStatus.CONFIRMED) for topic in confirmed),
    ]
    return reader


READERS = [
    _reader(1, "peggy@example.com", "Peggy", [MARVEL]),
    _reader(2, "o'brien+news@example.com", "Miles <O'Brien> & \"Keiko\"", [MARVEL]),
    _reader(3, "anon@example.com", None, [MARVEL]),
    _reader(4, "zoë@example.com", "Zoë Ünïcode", [TV, MARVEL]),
    _reader(5, "nameless@example.com", "", [TV, MARVEL]),
    _reader(6, "again@example.com", "Wanda", [MOVIES], confirmed=(MARVEL,)),
    _reader(7, "third@example.com", "Vision", [MARVEL, TV, MOVIES]),
]


@pytest.fixture
def frozen_clock(monkeypatch):
    """Links carry the second they were signed in: both ways must sign the same ones."""
    monkeypatch.setattr(time, "time", lambda: 1_800_000_000.0)


@pytest.fixture(autouse=True)
def empty_shared_templates():
    SHARED_CONFIRMATION_TEMPLATES.clear()
    yield
    SHARED_CONFIRMATION_TEMPLATES.clear()


def _delivery(reader: Subscriber) -> ClaimedDelivery:
    return ClaimedDelivery(reader.id, DeliveryKind.CONFIRMATION, reader.id, None, NOW, 1)


def _as_received(message) -> tuple:
    text = message.text.decoded() if hasattr(message.text, "decoded") else message.text.replace("\r\n", "\n")
    html = message.html.decoded() if hasattr(message.html, "decoded") else message.html.replace("\r\n", "\n")
    return message.to, message.subject, text, html, message.extra_headers, message.message_id


def _rendered_alone(reader: Subscriber, topics: list[Topic]) -> RenderedEmail:
    """The confirmation template rendered for this reader with nothing of the composers' own."""
    return render_email("confirmation", {
        "name": reader.name, "email": reader.email, "topics": topics,
        "confirm_url": links.confirm_url(reader.id, reader.token_epoch),
        "unsubscribe_url": links.unsubscribe_url(reader.id),
        "preferences_url": links.preferences_url(reader.id),
        "expires_in_days": 7, "sender_name": "Marvel News",
    })


def test_every_copy_equals_the_confirmation_rendered_for_that_reader_alone(session, frozen_clock):
    settings = get_settings()
    assert settings.CONFIRM_TOKEN_MAX_AGE == 7 * 86400 and settings.MAIL_FROM.startswith("Marvel News <")
    composer = ConfirmationComposer(settings)
    for _ in range(2):
        for reader in READERS:
            copy = composer.compose(_delivery(reader), reader, NOW)
            alone = compose_confirmation(_delivery(reader), reader, settings, NOW)
            assert _as_received(copy) == _as_received(alone), reader.email
            pending = sorted((subscription.topic for subscription in reader.subscriptions
                              if subscription.status == SubscriptionStatus.PENDING),
                             key=lambda topic: topic.name)
            expected = _rendered_alone(reader, pending)
            assert (copy.subject, *_as_received(copy)[2:4]) == (
                expected.subject, expected.text.replace("\r\n", "\n"), expected.html.replace("\r\n", "\n"))
    # One template and one probe per content: (named, Marvel), (unnamed, Marvel), (named, Marvel
    # + TV), (unnamed, Marvel + TV), (named, Movies), (named, all three).
    assert composer.copies.renders == 2 * 6


def test_the_copy_lists_the_pending_topics_and_carries_the_readers_own_links(session, monkeypatch):
    """The unsubscribe header is the body's very link, though the clock ticks between signings."""
    clock = iter(range(1_800_000_000, 1_900_000_000, 7))
    monkeypatch.setattr(time, "time", lambda: float(next(clock)))
    reader = READERS[3]
    message = ConfirmationComposer(get_settings()).compose(_delivery(reader), reader, NOW)
    text, html = message.text.decoded(), message.html.decoded()
    assert message.subject == 'Confirm your subscription to Marvel News, TV <News> & "more"'
    assert "Hi Zoë Ünïcode," in text and "zoë@example.com" in text
    assert "TV &lt;News&gt; &amp; \"more\"" in html
    confirm = [line for line in text.splitlines() if "/confirm/" in line]
    assert len(confirm) == 1 and f'href="{confirm[0].strip()}"' in html
    unsubscribe = dict(message.extra_headers)["List-Unsubscribe"].strip("<>")
    assert unsubscribe in text and f'href="{unsubscribe}"' in html


def test_a_later_batch_uses_the_content_an_earlier_one_made(session):
    first, second = READERS[0], READERS[1]
    earlier = ConfirmationComposer(get_settings())
    earlier.compose(_delivery(first), first, NOW)
    later = ConfirmationComposer(get_settings())
    message = later.compose(_delivery(second), second, NOW)
    assert earlier.copies.renders == 2 and later.copies.renders == 0
    assert "Hi Miles &lt;O'Brien&gt; &amp; \"Keiko\"," in message.html.decoded()


def test_a_renamed_topic_is_made_anew(session):
    renamed = Topic(id=1, slug="marvel-news", name="Marvel Studios News", description="")
    ConfirmationComposer(get_settings()).compose(_delivery(READERS[0]), READERS[0], NOW)
    reader = _reader(8, "later@example.com", "Later", [renamed])
    later = ConfirmationComposer(get_settings())
    message = later.compose(_delivery(reader), reader, NOW)
    assert later.copies.renders == 2
    assert message.subject == "Confirm your subscription to Marvel Studios News"
    assert "Marvel Studios News" in message.text.decoded()


def test_a_changed_link_lifetime_is_made_anew(session):
    reader = READERS[0]
    ConfirmationComposer(get_settings()).compose(_delivery(reader), reader, NOW)
    assert get_settings().CONFIRM_TOKEN_MAX_AGE > 86400
    settings = dataclasses.replace(get_settings(), CONFIRM_TOKEN_MAX_AGE=86400)
    later = ConfirmationComposer(settings)
    message = later.compose(_delivery(reader), reader, NOW)
    assert later.copies.renders == 2 and "The link works for 1 day." in message.text.decoded()
