"""The subscription lifecycle: subscribe, confirm, change preferences, leave.

Every function takes a session and plain values and leaves committing to the
caller, so a subscription and the delivery that announces it are written in one
transaction, and tasks are published only after that commit.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta

from email_validator import EmailNotValidError, validate_email
from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from service import new_readers
from service.config import FREQUENCIES
from service.consent import ConsentContext, mark_confirmed, mark_withdrawn, record_request
from service.errors import InvalidInput
from service.models import (
    Delivery,
    DeliveryKind,
    Frequency,
    Subscriber,
    SubscriberStatus,
    Subscription,
    SubscriptionStatus,
    Topic,
    utcnow,
)
from service.new_readers import NewReader
from service.schedule import is_valid_timezone

MAX_EMAIL_LENGTH = 254
MAX_NAME_LENGTH = 200
MAX_TOPICS = 20
@dataclass(frozen=True)
class ConfirmationPolicy:
    """How often a confirmation email may go to one address, however often the form is posted."""

    resend_after: timedelta = timedelta(hours=1)
    max_while_pending: int = 3


DEFAULT_POLICY = ConfirmationPolicy()


class InvalidSubscription(InvalidInput):
    """One or more fields were refused; ``errors`` maps field names to messages."""


class InvalidLink(Exception):
    """A confirm link that no longer matches its subscriber (left, erased or changed)."""


@dataclass(frozen=True)
class SubscriptionRequest:
    email: str
    topic_slugs: Sequence[str]
    name: str | None = None
    frequency: str | None = None
    timezone: str | None = None  # IANA name, e.g. from the browser's Intl API
    consent: ConsentContext | None = None


@dataclass
class SubscribeOutcome:
    subscriber_id: int
    delivery_ids: list[int] = field(default_factory=list)


def normalise_email(raw: str) -> str:
    """Validate an address and return it in the one form we store.

    Raises InvalidSubscription naming the ``email`` field. No DNS lookups: an
    address that is well-formed but undeliverable is found out by the bounce.

    The form we store is the one we can send to: an internationalised domain in
    its ASCII (IDNA) spelling, which every SMTP server takes. A local part
    outside ASCII would need SMTPUTF8 from every server on the way, which we do
    not ask for, so it is refused here rather than accepted and never mailed.
    """
    raw = raw.strip()
    if not raw:
        raise InvalidSubscription({"email": "Please enter your email address."})
    if len(raw) > MAX_EMAIL_LENGTH:
        raise InvalidSubscription({"email": "That email address is too long."})
    try:
        result = validate_email(raw, check_deliverability=False, allow_smtputf8=False)
    except EmailNotValidError as error:
        raise InvalidSubscription({"email": f"That is not a valid email address: {error}"}) from None
    return result.ascii_email.lower()


def active_topics(session: Session) -> list[Topic]:
    """Topics a reader can subscribe to, in display order."""
    return list(session.scalars(select(Topic).where(Topic.retired_at.is_(None)).order_by(Topic.name)))


def subscribe(
    session: Session,
    request: SubscriptionRequest,
    default_frequency: str,
    policy: ConfirmationPolicy = DEFAULT_POLICY,
    commit_new_reader: bool = False,
) -> SubscribeOutcome:
    """Record a pending subscription and, when needed, a confirmation delivery.

    The outcome is the same for a new, pending or confirmed address as far as
    the reader can tell; only the rows differ. Nothing is ever sent to an
    address that has not confirmed except the confirmation itself.

    On PostgreSQL an address never seen before, the commonest post, is stored
    in one statement (``service.new_readers``); every other case goes through
    :func:`subscribe_in_steps`, which leaves the same rows. With
    ``commit_new_reader`` (a form post, which commits next anyway) that
    statement commits itself if the session has no transaction open, saving
    BEGIN and COMMIT; the caller can then not roll it back.
    """
    errors: dict[str, str] = {}
    fields = _check_fields(request, errors)
    slugs = _normalised_slugs(request.topic_slugs, errors)
    if not errors and slugs and policy.max_while_pending > 0 and new_readers.supported(session):
        inserted = new_readers.insert_new_reader(session, NewReader(
            fields.email, slugs, fields.name, fields.frequency, fields.timezone, request.consent,
        ), default_frequency, utcnow(), commit_alone=commit_new_reader)
        if inserted is not None:
            subscriber_id, delivery_id = inserted
            return SubscribeOutcome(subscriber_id, [delivery_id])
    return subscribe_in_steps(session, request, default_frequency, policy)


def subscribe_in_steps(
    session: Session,
    request: SubscriptionRequest,
    default_frequency: str,
    policy: ConfirmationPolicy = DEFAULT_POLICY,
) -> SubscribeOutcome:
    """:func:`subscribe` for every case, on any database, one query or flush per step."""
    errors: dict[str, str] = {}
    fields = _check_fields(request, errors)
    topics = _topics_by_slug(session, request.topic_slugs, errors)
    if not topics and "topics" not in errors:
        errors["topics"] = "Choose at least one topic."
    if errors:
        raise InvalidSubscription(errors)
    email, name, frequency, timezone = fields.email, fields.name, fields.frequency, fields.timezone
    subscriber = _get_or_create_subscriber(
        session, email, name, frequency or _default_frequency(topics, default_frequency)
    )
    outcome = SubscribeOutcome(subscriber_id=subscriber.id)

    if subscriber.status == SubscriberStatus.UNSUBSCRIBED:
        # Coming back is a new consent: old confirm links stay dead.
        subscriber.status = SubscriberStatus.PENDING
        subscriber.token_epoch += 1
        subscriber.unsubscribed_at = None
    if subscriber.status == SubscriberStatus.PENDING:
        # Nobody has proven they own this address yet, so the latest form wins.
        subscriber.name = name if name is not None else subscriber.name
        subscriber.frequency = Frequency(frequency) if frequency else subscriber.frequency
        subscriber.timezone = timezone or subscriber.timezone or "UTC"

    asked = _request_topics(session, subscriber, topics)
    if request.consent is not None:
        record_request(session, asked, request.consent, utcnow())
    if _has_pending_topics(subscriber):
        delivery = _queue_confirmation(session, subscriber, policy)
        if delivery is not None:
            outcome.delivery_ids.append(delivery.id)
    return outcome


def confirm_subscription(session: Session, subscriber_id: int, token_epoch: int) -> Subscriber:
    """Confirm the subscriber and every topic they asked for. Harmless to repeat.

    Raises InvalidLink when the link was issued before the reader left (or was
    erased), so a stale email cannot resubscribe anyone.
    """
    subscriber = session.get(Subscriber, subscriber_id, with_for_update=True)
    if subscriber is None or subscriber.token_epoch != token_epoch:
        raise InvalidLink("this confirmation link is no longer valid")
    now = utcnow()
    if subscriber.status != SubscriberStatus.CONFIRMED:
        subscriber.status = SubscriberStatus.CONFIRMED
        subscriber.confirmed_at = now
        # Digests start from now: a new reader does not get a flood of old articles.
        subscriber.digest_since = now
    subscriber.confirmation_requested_at = None
    subscriber.pending_confirmations = 0
    confirmed = [s for s in subscriber.subscriptions if s.status == SubscriptionStatus.PENDING]
    for subscription in confirmed:
        subscription.status = SubscriptionStatus.CONFIRMED
        subscription.confirmed_at = now
    mark_confirmed(session, confirmed, now)
    return subscriber


def unsubscribe(session: Session, subscriber_id: int, via: str = "one-click") -> Subscriber | None:
    """Leave every topic at once (RFC 8058 one-click). Harmless to repeat.

    Returns None when the subscriber no longer exists: they are gone already.
    ``via`` is kept in the consent records (one-click, preferences, complaint ...).
    """
    subscriber = session.get(Subscriber, subscriber_id, with_for_update=True)
    if subscriber is None:
        return None
    now = utcnow()
    if subscriber.status != SubscriberStatus.UNSUBSCRIBED:
        subscriber.status = SubscriberStatus.UNSUBSCRIBED
        subscriber.unsubscribed_at = now
        subscriber.token_epoch += 1
    subscriber.confirmation_requested_at = None
    subscriber.pending_confirmations = 0
    left = [s for s in subscriber.subscriptions if s.status != SubscriptionStatus.UNSUBSCRIBED]
    for subscription in left:
        subscription.status = SubscriptionStatus.UNSUBSCRIBED
        subscription.unsubscribed_at = now
    mark_withdrawn(session, left, now, via)
    return subscriber


@dataclass(frozen=True)
class PreferencesUpdate:
    topic_slugs: Sequence[str]
    frequency: str
    name: str | None
    timezone: str | None = None
    consent: ConsentContext | None = None


def update_preferences(
    session: Session, subscriber_id: int, update: PreferencesUpdate
) -> Subscriber | None:
    """Set exactly these topics, frequency and name; no topics means leaving.

    The preferences link was mailed to the address, so following it proves the
    reader owns it: an unsubscribed reader who picks topics is confirmed again.
    A reader still pending stays pending until they confirm.
    """
    subscriber = session.get(Subscriber, subscriber_id, with_for_update=True)
    if subscriber is None:
        return None
    errors: dict[str, str] = {}
    topics = _topics_by_slug(session, update.topic_slugs, errors)
    if update.frequency not in FREQUENCIES:
        errors["frequency"] = f"Choose one of: {', '.join(FREQUENCIES)}."
    name = _clean_name(update.name, errors)
    timezone = _clean_timezone(update.timezone, errors)
    if errors:
        raise InvalidSubscription(errors)
    if not topics:
        return unsubscribe(session, subscriber_id, via="preferences")

    subscriber.frequency = Frequency(update.frequency)
    subscriber.name = name
    subscriber.timezone = timezone or subscriber.timezone
    now = utcnow()
    if subscriber.status == SubscriberStatus.UNSUBSCRIBED:
        subscriber.status = SubscriberStatus.CONFIRMED
        subscriber.confirmed_at = now
        subscriber.digest_since = now
        subscriber.unsubscribed_at = None
    wanted_state = (
        SubscriptionStatus.PENDING
        if subscriber.status == SubscriberStatus.PENDING
        else SubscriptionStatus.CONFIRMED
    )
    by_topic = {s.topic_id: s for s in subscriber.subscriptions}
    wanted_ids = {t.id for t in topics}
    joined: list[Subscription] = []
    for topic in topics:
        subscription = by_topic.get(topic.id)
        if subscription is None:
            subscription = Subscription(topic=topic, status=wanted_state, created_at=now)
            subscriber.subscriptions.append(subscription)
        elif subscription.status in (wanted_state, SubscriptionStatus.CONFIRMED):
            continue
        subscription.status = wanted_state
        subscription.unsubscribed_at = None
        if wanted_state == SubscriptionStatus.CONFIRMED:
            subscription.confirmed_at = now
        joined.append(subscription)
    left = [s for topic_id, s in by_topic.items()
            if topic_id not in wanted_ids and s.status != SubscriptionStatus.UNSUBSCRIBED]
    for subscription in left:
        subscription.status = SubscriptionStatus.UNSUBSCRIBED
        subscription.unsubscribed_at = now
    session.flush()
    if update.consent is not None:
        record_request(session, joined, update.consent, now,
                       confirmed=wanted_state == SubscriptionStatus.CONFIRMED)
    mark_withdrawn(session, left, now, "preferences")
    return subscriber


def request_new_confirmation(
    session: Session, subscriber_id: int, token_epoch: int, policy: ConfirmationPolicy = DEFAULT_POLICY,
) -> Delivery | None:
    """Queue a fresh confirmation email for a reader whose link expired.

    Returns None when there is nothing to confirm or the link predates a change.
    """
    subscriber = session.get(Subscriber, subscriber_id, with_for_update=True)
    if (
        subscriber is None
        or subscriber.token_epoch != token_epoch
        or not _has_pending_topics(subscriber)
    ):
        return None
    return _queue_confirmation(session, subscriber, policy)


def subscribed_topic_ids(subscriber: Subscriber) -> set[int]:
    """Topics the reader is in or has asked for (pending or confirmed)."""
    return {
        s.topic_id for s in subscriber.subscriptions if s.status != SubscriptionStatus.UNSUBSCRIBED
    }


@dataclass(frozen=True)
class _Fields:
    email: str
    name: str | None
    frequency: str | None
    timezone: str | None


def _check_fields(request: SubscriptionRequest, errors: dict[str, str]) -> _Fields:
    """Check every field but the topics, adding what is wrong to ``errors``."""
    email = ""
    try:
        email = normalise_email(request.email)
    except InvalidSubscription as invalid:
        errors.update(invalid.errors)
    frequency = request.frequency or None
    if frequency is not None and frequency not in FREQUENCIES:
        errors["frequency"] = f"Choose one of: {', '.join(FREQUENCIES)}."
    name = _clean_name(request.name, errors)
    timezone = _clean_timezone(request.timezone, errors)
    return _Fields(email, name, frequency, timezone)


def _clean_timezone(raw: str | None, errors: dict[str, str]) -> str | None:
    timezone = (raw or "").strip() or None
    if timezone is not None and (len(timezone) > 64 or not is_valid_timezone(timezone)):
        errors["timezone"] = "Unknown time zone; use a name like Europe/Berlin."
        return None
    return timezone


def _clean_name(raw: str | None, errors: dict[str, str]) -> str | None:
    name = (raw or "").strip() or None
    if name is not None and len(name) > MAX_NAME_LENGTH:
        errors["name"] = f"Please keep your name under {MAX_NAME_LENGTH} characters."
    if name is not None and any(ord(ch) < 32 for ch in name):
        errors["name"] = "Your name contains characters we cannot use."
    return name


def _normalised_slugs(slugs: Iterable[str], errors: dict[str, str]) -> list[str]:
    wanted = list(dict.fromkeys(s.strip().lower() for s in slugs if s and s.strip()))
    if len(wanted) > MAX_TOPICS:
        errors["topics"] = f"Choose at most {MAX_TOPICS} topics."
        return []
    return wanted


def _topics_by_slug(session: Session, slugs: Iterable[str], errors: dict[str, str]) -> list[Topic]:
    wanted = _normalised_slugs(slugs, errors)
    if not wanted:
        return []
    found = {
        t.slug: t
        for t in session.scalars(
            select(Topic).where(Topic.slug.in_(wanted), Topic.retired_at.is_(None))
        )
    }
    unknown = [slug for slug in wanted if slug not in found]
    if unknown:
        errors["topics"] = f"Unknown topic: {', '.join(unknown)}."
    return [found[slug] for slug in wanted if slug in found]


def _default_frequency(topics: Sequence[Topic], fallback: str) -> str:
    for topic in topics:
        if topic.default_frequency is not None:
            return topic.default_frequency.value
    return fallback


def _get_or_create_subscriber(
    session: Session, email: str, name: str | None, frequency: str
) -> Subscriber:
    existing = session.scalars(
        select(Subscriber).where(Subscriber.email == email).with_for_update()
    ).one_or_none()
    if existing is not None:
        return existing
    # ON CONFLICT DO NOTHING rather than a savepoint around the INSERT (two round
    # trips fewer): losing a race with a concurrent post for the same address
    # makes this insert a no-op once the other commits, and the select finds its row.
    insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    created = session.scalars(
        insert(Subscriber).values(email=email, name=name, frequency=Frequency(frequency))
        .on_conflict_do_nothing(index_elements=[Subscriber.email])
        .returning(Subscriber)
    ).one_or_none()
    if created is None:
        return session.scalars(
            select(Subscriber).where(Subscriber.email == email).with_for_update()
        ).one()
    # A new reader has no subscriptions yet: say so rather than query for them.
    set_committed_value(created, "subscriptions", [])
    return created


def _request_topics(session: Session, subscriber: Subscriber, topics: Sequence[Topic]
                    ) -> list[Subscription]:
    """Mark the topics pending unless already confirmed; returns those newly asked for."""
    by_topic = {s.topic_id: s for s in subscriber.subscriptions}
    asked: list[Subscription] = []
    for topic in topics:
        subscription = by_topic.get(topic.id)
        if subscription is None:
            subscription = Subscription(topic=topic, status=SubscriptionStatus.PENDING)
            subscriber.subscriptions.append(subscription)
            asked.append(subscription)
        elif subscription.status == SubscriptionStatus.UNSUBSCRIBED:
            subscription.status = SubscriptionStatus.PENDING
            subscription.unsubscribed_at = None
            asked.append(subscription)
        elif subscription.status == SubscriptionStatus.PENDING:
            asked.append(subscription)  # asked again: the latest request is recorded too
    session.flush()
    return asked


def _has_pending_topics(subscriber: Subscriber) -> bool:
    return any(s.status == SubscriptionStatus.PENDING for s in subscriber.subscriptions)


def _queue_confirmation(
    session: Session, subscriber: Subscriber, policy: ConfirmationPolicy
) -> Delivery | None:
    """Queue a confirmation unless one went out within the window or the cap is reached."""
    now = utcnow()
    last = subscriber.confirmation_requested_at
    if last is not None and now - last < policy.resend_after:
        return None
    if subscriber.pending_confirmations >= policy.max_while_pending:
        return None
    subscriber.confirmation_requested_at = now
    subscriber.pending_confirmations += 1
    delivery = Delivery(kind=DeliveryKind.CONFIRMATION, subscriber=subscriber)
    session.add(delivery)
    session.flush()
    return delivery
