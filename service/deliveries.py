"""The delivery ledger: claim a message, send it once, record what happened.

A delivery row moves queued -> sending -> sent, or to deferred (retried later),
failed (given up) or suppressed (no longer wanted). The move to *sending* is a
conditional UPDATE committed before talking to SMTP, so two workers holding the
same task cannot both send it. This module commits: each step of a delivery
must be durable before the next one starts.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import and_, or_, select, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from service.config import Settings
from service.mail.compose import compose_confirmation, compose_digest
from service.mail.message import OutgoingMessage, build_mime
from service.mail.transport import PermanentSendError, TemporarySendError, Transport
from service.models import (
    Delivery,
    DeliveryKind,
    DeliveryState,
    Subscriber,
    SubscriberStatus,
    SubscriptionStatus,
    utcnow,
)
from service.pauses import open_pause
from service.suppressions import is_suppressed
from service.verp import verp_address

log = logging.getLogger(__name__)
MAX_BACKOFF_SECONDS = 3600.0
SENT_COMMIT_ATTEMPTS = 6  # about six seconds of retrying in all


class RetryLater(Exception):
    """The message was deferred; try again after ``countdown`` seconds."""

    def __init__(self, countdown: float, reason: str) -> None:
        super().__init__(reason)
        self.countdown = countdown


@dataclass(frozen=True)
class DeliveryResult:
    delivery_id: int
    state: DeliveryState | None  # None: the delivery was not ours to send (gone or taken)


Composer = Callable[[Delivery, Subscriber, Settings, datetime], OutgoingMessage]
_COMPOSERS: dict[DeliveryKind, Composer] = {
    DeliveryKind.CONFIRMATION: compose_confirmation,
    DeliveryKind.DIGEST: compose_digest,
}


def deliver(session: Session, delivery_id: int, transport: Transport, settings: Settings
            ) -> DeliveryResult:
    """Send one delivery if it is still due and wanted.

    Raises RetryLater after recording a temporary failure; the caller schedules
    the next attempt.
    """
    if not _claim(session, delivery_id, settings):
        return DeliveryResult(delivery_id, None)
    delivery = session.get(Delivery, delivery_id)
    assert delivery is not None  # we just claimed it
    subscriber = delivery.subscriber
    reason = _why_not_wanted(session, delivery, subscriber)
    if reason is not None or subscriber is None:
        return _finish(session, delivery, DeliveryState.SUPPRESSED, reason or "subscriber gone")

    if open_pause(session) is not None:
        return _wait_for_resume(session, delivery, settings)

    now = utcnow()
    message = _COMPOSERS[delivery.kind](delivery, subscriber, settings, now)
    delivery.message_id = message.message_id
    try:
        transport.send(envelope_sender(delivery, message, settings), [message.to], build_mime(message),
                       subject=message.subject, message_id=message.message_id)
    except PermanentSendError as error:
        subscriber.last_delivery_error = error.reply
        return _finish(session, delivery, DeliveryState.FAILED, error.reply)
    except TemporarySendError as error:
        return _defer(session, delivery, settings, error.reply)
    return _record_sent(session, delivery_id, message.message_id, now)


def stalled_delivery_ids(session: Session, settings: Settings, limit: int = 500) -> list[int]:
    """Deliveries whose task was lost: never published, or its worker died.

    A queued or deferred row is stalled once it is DELIVERY_STALE_SECONDS past
    due; a sending row once its DELIVERY_LEASE_SECONDS lease ran out.
    """
    now = utcnow()
    stale = now - timedelta(seconds=settings.DELIVERY_STALE_SECONDS)
    lease = now - timedelta(seconds=settings.DELIVERY_LEASE_SECONDS)
    query = (
        select(Delivery.id)
        .where(or_(
            and_(Delivery.state.in_((DeliveryState.QUEUED, DeliveryState.DEFERRED)),
                 Delivery.next_attempt_at < stale),
            and_(Delivery.state == DeliveryState.SENDING, Delivery.updated_at < lease),
        ))
        .order_by(Delivery.id)
        .limit(limit)
    )
    return list(session.scalars(query))


def retry_delay(attempts: int, base_seconds: float) -> float:
    """Exponential backoff with jitter: about base, 2x base, 4x base ... capped at an hour."""
    ceiling = min(MAX_BACKOFF_SECONDS, base_seconds * 2 ** max(0, attempts - 1))
    return random.uniform(ceiling / 2, ceiling)


def _claim(session: Session, delivery_id: int, settings: Settings) -> bool:
    now = utcnow()
    lease_expired = now - timedelta(seconds=settings.DELIVERY_LEASE_SECONDS)
    claimed = session.execute(
        update(Delivery)
        .where(
            Delivery.id == delivery_id,
            or_(
                Delivery.state.in_((DeliveryState.QUEUED, DeliveryState.DEFERRED)),
                and_(Delivery.state == DeliveryState.SENDING, Delivery.updated_at < lease_expired),
            ),
        )
        .values(state=DeliveryState.SENDING, attempts=Delivery.attempts + 1, updated_at=now)
        .execution_options(synchronize_session=False)
    ).rowcount
    session.commit()
    return claimed == 1


def envelope_sender(delivery: Delivery, message: OutgoingMessage, settings: Settings) -> str:
    """The VERP bounce address of this delivery, or the From address without BOUNCE_ADDRESS."""
    if settings.BOUNCE_ADDRESS is None:
        return message.envelope_from
    return verp_address(settings.BOUNCE_ADDRESS, delivery.id, settings.SECRET_KEY)


def _why_not_wanted(session: Session, delivery: Delivery, subscriber: Subscriber | None) -> str | None:
    """Re-check right before sending: the reader may have confirmed, left or bounced meanwhile."""
    if subscriber is None:
        return "subscriber gone"
    if is_suppressed(session, subscriber.email):
        return "address suppressed"
    if subscriber.status == SubscriberStatus.UNSUBSCRIBED:
        return "subscriber unsubscribed"
    if delivery.kind == DeliveryKind.CONFIRMATION and not any(
        s.status == SubscriptionStatus.PENDING for s in subscriber.subscriptions
    ):
        return "nothing left to confirm"
    if delivery.kind == DeliveryKind.DIGEST and subscriber.status != SubscriberStatus.CONFIRMED:
        return "subscriber not confirmed"
    return None


def _defer(session: Session, delivery: Delivery, settings: Settings, reply: str) -> DeliveryResult:
    if delivery.attempts >= settings.DELIVERY_MAX_ATTEMPTS:
        if delivery.subscriber is not None:
            delivery.subscriber.last_delivery_error = reply
        return _finish(session, delivery, DeliveryState.FAILED,
                       f"gave up after {delivery.attempts} attempts: {reply}")
    countdown = retry_delay(delivery.attempts, settings.DELIVERY_RETRY_BASE_SECONDS)
    delivery.next_attempt_at = utcnow() + timedelta(seconds=countdown)
    _finish(session, delivery, DeliveryState.DEFERRED, reply)
    raise RetryLater(countdown, reply)


def _wait_for_resume(session: Session, delivery: Delivery, settings: Settings) -> DeliveryResult:
    """Sending is paused: defer without spending an attempt, look again later."""
    delivery.attempts -= 1
    delivery.next_attempt_at = utcnow() + timedelta(seconds=settings.PAUSE_RECHECK_SECONDS)
    _finish(session, delivery, DeliveryState.DEFERRED, "sending paused by the operator")
    raise RetryLater(settings.PAUSE_RECHECK_SECONDS, "sending paused")


def _record_sent(session: Session, delivery_id: int, message_id: str, sent_at: datetime) -> DeliveryResult:
    """Mark the delivery sent, trying hard: the relay has accepted the message.

    If the commit fails now (the database connection dropped while we talked
    to SMTP), the row would stay 'sending' and be sent again once its lease
    ran out. So we retry on a fresh connection before giving up; only a
    database that stays away longer than that leaves the duplicate window open.
    """
    for attempt in range(SENT_COMMIT_ATTEMPTS):
        try:
            session.execute(
                update(Delivery).where(Delivery.id == delivery_id)
                .values(state=DeliveryState.SENT, sent_at=sent_at, message_id=message_id,
                        last_error=None, updated_at=utcnow())
                .execution_options(synchronize_session=False)
            )
            session.commit()
        except DBAPIError as error:
            session.rollback()
            if attempt == SENT_COMMIT_ATTEMPTS - 1:
                raise
            log.warning("delivery %s sent but not yet recorded (%s); retrying",
                        delivery_id, error.__class__.__name__)
            time.sleep(0.2 * 2 ** attempt)
        else:
            log.info("delivery %s sent", delivery_id)
            return DeliveryResult(delivery_id, DeliveryState.SENT)
    raise AssertionError("unreachable")


def _finish(session: Session, delivery: Delivery, state: DeliveryState, error: str | None
            ) -> DeliveryResult:
    delivery.state = state
    delivery.last_error = error
    session.commit()
    log.info("delivery %s %s", delivery.id, state.value)
    return DeliveryResult(delivery.id, state)


def reschedule_stalled(session: Session, settings: Settings, limit: int = 500) -> list[int]:
    """Mark stalled deliveries as queued now and return their ids for republishing.

    Touching ``next_attempt_at`` keeps the next sweep from publishing them again
    while their new task waits in a long queue.
    """
    ids = stalled_delivery_ids(session, settings, limit)
    if ids:
        session.execute(
            update(Delivery)
            .where(Delivery.id.in_(ids), Delivery.state != DeliveryState.SENDING)
            .values(next_attempt_at=utcnow())
            .execution_options(synchronize_session=False)
        )
        session.commit()
    return ids


@dataclass(frozen=True)
class BatchResult:
    results: list[DeliveryResult]
    retries: list[tuple[int, float]]  # (delivery id, seconds until its next attempt)


def deliver_many(session: Session, delivery_ids: list[int], transport: Transport, settings: Settings
                 ) -> BatchResult:
    """Send several deliveries over one transport (one SMTP connection)."""
    results: list[DeliveryResult] = []
    retries: list[tuple[int, float]] = []
    for delivery_id in delivery_ids:
        try:
            results.append(deliver(session, delivery_id, transport, settings))
        except RetryLater as later:
            retries.append((delivery_id, later.countdown))
    return BatchResult(results, retries)
