"""The delivery ledger: claim messages, send each once, record what happened.

A delivery row moves queued -> sending -> sent, or to deferred (retried later),
failed (given up) or suppressed (no longer wanted). The move to *sending* is a
conditional UPDATE committed before talking to SMTP, so two workers holding the
same task cannot both send a message.

Deliveries go through in groups of DELIVERY_GROUP_SIZE: one UPDATE ... RETURNING
claims the group, a few set queries load what it needs (readers, suppressions,
digest items), the messages go out over one SMTP connection, and one commit
records every outcome. Per-message round trips to the database were most of
the cost of a send. The price is the duplicate window: a process killed after
SMTP accepted a message but before the group's commit leaves up to a group's
rows in *sending*, and they are sent again once their lease runs out.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, or_, select, update
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.orm import Session, selectinload

from service.autocommit import can_commit_alone, execute_alone
from service.config import Settings
from service.mail.compose import MessageComposer
from service.mail.message import OutgoingMessage, build_mime
from service.mail.transport import Envelope, PermanentSendError, Transport
from service.models import (
    Delivery,
    DeliveryKind,
    DeliveryState,
    Subscriber,
    SubscriberStatus,
    Subscription,
    SubscriptionStatus,
    utcnow,
)
from service.pauses import open_pause
from service.suppressions import suppressed_addresses
from service.value_lists import among, update_each
from service.verp import verp_address

log = logging.getLogger(__name__)
MAX_BACKOFF_SECONDS = 3600.0
RECORD_ATTEMPTS = 6  # about six seconds of retrying in all


class RetryLater(Exception):
    """The message was deferred; try again after ``countdown`` seconds."""

    def __init__(self, countdown: float, reason: str) -> None:
        super().__init__(reason)
        self.countdown = countdown


@dataclass(frozen=True)
class DeliveryResult:
    delivery_id: int
    state: DeliveryState | None  # None: the delivery was not ours to send (gone or taken)
    retry_in: float | None = None  # deferred: seconds until the next attempt
    reason: str | None = None


@dataclass(frozen=True)
class BatchResult:
    results: list[DeliveryResult]

    @property
    def retries(self) -> list[tuple[int, float]]:
        """(delivery id, seconds until its next attempt) of each deferred delivery."""
        return [(r.delivery_id, r.retry_in) for r in self.results if r.retry_in is not None]


@dataclass(frozen=True)
class ClaimedDelivery:
    """A ledger row as claimed: plain data, so it outlives the claim's commit."""

    id: int
    kind: DeliveryKind
    subscriber_id: int | None
    period: str | None
    created_at: datetime
    attempts: int


def deliver(session: Session, delivery_id: int, transport: Transport, settings: Settings
            ) -> DeliveryResult:
    """Send one delivery if it is still due and wanted.

    Raises RetryLater after recording a temporary failure; the caller schedules
    the next attempt.
    """
    [result] = deliver_many(session, [delivery_id], transport, settings).results
    if result.retry_in is not None:
        raise RetryLater(result.retry_in, result.reason or "")
    return result


def deliver_many(session: Session, delivery_ids: Sequence[int], transport: Transport, settings: Settings
                 ) -> BatchResult:
    """Send several deliveries over one transport (one SMTP connection), group by group."""
    composer = MessageComposer(session, settings)
    results: list[DeliveryResult] = []
    size = settings.DELIVERY_GROUP_SIZE
    for start in range(0, len(delivery_ids), size):
        group = delivery_ids[start:start + size]
        results.extend(_deliver_group(session, group, transport, settings, composer))
    return BatchResult(results)


def _deliver_group(session: Session, delivery_ids: Sequence[int], transport: Transport, settings: Settings,
                   composer: MessageComposer) -> list[DeliveryResult]:
    claimed = _claim(session, delivery_ids, settings)
    outcomes = _Outcomes(claimed)
    try:
        if claimed and open_pause(session) is not None:
            for delivery in claimed:
                outcomes.wait_for_resume(delivery, settings)
        elif claimed:
            _send_group(session, claimed, transport, settings, composer, outcomes)
    except BaseException:
        # Record what was sent before the trouble, or it would be sent again.
        session.rollback()
        outcomes.record(session)
        raise
    outcomes.record(session)
    taken = {delivery.id for delivery in claimed}
    return [outcomes.results[i] if i in taken else DeliveryResult(i, None) for i in delivery_ids]


def _send_group(session: Session, claimed: list[ClaimedDelivery], transport: Transport, settings: Settings,
                composer: MessageComposer, outcomes: _Outcomes) -> None:
    readers = select(Subscriber).where(among(session, Subscriber.id, {d.subscriber_id for d in claimed}))
    if any(d.kind == DeliveryKind.CONFIRMATION for d in claimed):
        # A confirmation checks and lists the reader's pending topics: loaded with the group in
        # two queries, not lazily in two per reader.
        readers = readers.options(selectinload(Subscriber.subscriptions).joinedload(Subscription.topic))
    subscribers = {s.id: s for s in session.scalars(readers)}
    suppressed = suppressed_addresses(session, [s.email for s in subscribers.values()])
    composer.load(claimed)
    lease = _Lease(session, settings)
    sendable = _sendable(claimed, subscribers, suppressed, settings, composer, outcomes, lease)
    for (delivery, message_id, now), error in transport.send_all(sendable):
        if error is None:
            outcomes.sent(delivery, message_id, now)
        elif isinstance(error, PermanentSendError):
            outcomes.fail(delivery, error.reply, message_id)
        else:
            outcomes.defer(delivery, settings, error.reply, message_id)


def _sendable(claimed: list[ClaimedDelivery], subscribers: dict[int, Subscriber], suppressed: set[str],
              settings: Settings, composer: MessageComposer, outcomes: _Outcomes, lease: _Lease
              ) -> Iterator[tuple[tuple[ClaimedDelivery, str, datetime], Envelope]]:
    """The group's messages, made one at a time as the transport takes them; the rest are
    recorded as not sent."""
    for delivery in claimed:
        subscriber = subscribers.get(delivery.subscriber_id or 0)
        reason = _why_not_wanted(delivery, subscriber, suppressed)
        if reason is not None or subscriber is None:
            outcomes.finish(delivery, DeliveryState.SUPPRESSED, reason or "subscriber gone")
            continue
        # Every row of the group: those sent already stay *sending* until the group is recorded.
        lease.keep([d.id for d in claimed])
        now = utcnow()
        try:
            message = composer.compose(delivery, subscriber, now)
            raw = build_mime(message)
        except SQLAlchemyError:
            raise
        except Exception:
            # A template or data problem that retrying cannot fix: fail this one, send the rest.
            log.exception("delivery %s could not be composed", delivery.id)
            outcomes.finish(delivery, DeliveryState.FAILED, "the message could not be composed")
            continue
        envelope = Envelope(envelope_sender(delivery, message, settings), (message.to,), raw,
                            message.subject, message.message_id, transparent=True)
        yield (delivery, message.message_id, now), envelope


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


def _claim(session: Session, delivery_ids: Sequence[int], settings: Settings) -> list[ClaimedDelivery]:
    """Move the group's due rows to *sending* in one committed UPDATE; returns them in the given order."""
    now = utcnow()
    lease_expired = now - timedelta(seconds=settings.DELIVERY_LEASE_SECONDS)
    # Core, not the ORM's bulk UPDATE: nothing here needs the ORM, and its layer cost as much as the rest.
    table = Delivery.__table__
    claim = (
        update(table)
        .where(
            among(session, table.c.id, delivery_ids),
            or_(
                table.c.state.in_((DeliveryState.QUEUED, DeliveryState.DEFERRED)),
                and_(table.c.state == DeliveryState.SENDING, table.c.updated_at < lease_expired),
            ),
        )
        .values(state=DeliveryState.SENDING, attempts=table.c.attempts + 1, updated_at=now)
        .returning(table.c.id, table.c.kind, table.c.subscriber_id, table.c.period, table.c.created_at,
                   table.c.attempts)
    )
    if can_commit_alone(session):
        rows = execute_alone(session, claim)
    else:
        rows = session.execute(claim).all()
        session.commit()
    by_id = {row.id: ClaimedDelivery(*row) for row in rows}
    return [by_id[i] for i in dict.fromkeys(delivery_ids) if i in by_id]


def envelope_sender(delivery: Delivery, message: OutgoingMessage, settings: Settings) -> str:
    """The VERP bounce address of this delivery, or the From address without BOUNCE_ADDRESS."""
    if settings.BOUNCE_ADDRESS is None:
        return message.envelope_from
    return verp_address(settings.BOUNCE_ADDRESS, delivery.id, settings.SECRET_KEY)


def _why_not_wanted(delivery: ClaimedDelivery, subscriber: Subscriber | None, suppressed: set[str]
                    ) -> str | None:
    """Re-check before sending, on the readers as the group loaded them: the reader may have
    confirmed, left or bounced since the delivery was queued."""
    if subscriber is None:
        return "subscriber gone"
    if subscriber.email in suppressed:
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


class _Lease:
    """Renews the claim of a group's rows when sending it takes long (a slow relay, a low
    SEND_RATE_LIMIT), so the sweep does not hand them to another worker meanwhile."""

    def __init__(self, session: Session, settings: Settings) -> None:
        self._session = session
        self._renew_after = settings.DELIVERY_LEASE_SECONDS / 2
        self._claimed_at = time.monotonic()

    def keep(self, delivery_ids: list[int]) -> None:
        if time.monotonic() - self._claimed_at < self._renew_after or not delivery_ids:
            return
        self._session.execute(
            update(Delivery)
            .where(among(self._session, Delivery.id, delivery_ids), Delivery.state == DeliveryState.SENDING)
            .values(updated_at=utcnow())
            .execution_options(synchronize_session=False)
        )
        self._session.commit()
        self._claimed_at = time.monotonic()


@dataclass
class _Outcomes:
    """What happened to each claimed delivery, kept as data until ``record`` commits it all."""

    claimed: list[ClaimedDelivery]
    results: dict[int, DeliveryResult] = field(default_factory=dict)
    changes: dict[int, dict[str, Any]] = field(default_factory=dict)
    reader_errors: dict[int, str] = field(default_factory=dict)

    def sent(self, delivery: ClaimedDelivery, message_id: str, sent_at: datetime) -> None:
        self._set(delivery, DeliveryState.SENT, None, message_id=message_id, sent_at=sent_at)

    def finish(self, delivery: ClaimedDelivery, state: DeliveryState, error: str) -> None:
        self._set(delivery, state, error)

    def fail(self, delivery: ClaimedDelivery, reply: str, message_id: str) -> None:
        self._note_reader_error(delivery, reply)
        self._set(delivery, DeliveryState.FAILED, reply, message_id=message_id)

    def defer(self, delivery: ClaimedDelivery, settings: Settings, reply: str, message_id: str) -> None:
        if delivery.attempts >= settings.DELIVERY_MAX_ATTEMPTS:
            self._note_reader_error(delivery, reply)
            self._set(delivery, DeliveryState.FAILED, f"gave up after {delivery.attempts} attempts: {reply}",
                      message_id=message_id)
            return
        countdown = retry_delay(delivery.attempts, settings.DELIVERY_RETRY_BASE_SECONDS)
        self._set(delivery, DeliveryState.DEFERRED, reply, retry_in=countdown, message_id=message_id,
                  next_attempt_at=utcnow() + timedelta(seconds=countdown))

    def wait_for_resume(self, delivery: ClaimedDelivery, settings: Settings) -> None:
        """Sending is paused: defer without spending an attempt, look again later."""
        self._set(delivery, DeliveryState.DEFERRED, "sending paused by the operator",
                  retry_in=settings.PAUSE_RECHECK_SECONDS, attempts=delivery.attempts - 1,
                  next_attempt_at=utcnow() + timedelta(seconds=settings.PAUSE_RECHECK_SECONDS))

    def record(self, session: Session) -> None:
        """Commit every outcome, trying hard: some of these messages were accepted by the relay.

        If the commit fails now (the database connection dropped while we talked
        to SMTP), the rows would stay 'sending' and be sent again once their
        lease ran out. So we retry on a fresh connection before giving up; only
        a database that stays away longer than that leaves the duplicate window open.
        """
        if not self.changes:
            session.commit()  # whatever the transport stored (the outbox's captured mail)
            return
        for attempt in range(RECORD_ATTEMPTS):
            try:
                self._write(session)
                session.commit()
            except DBAPIError as error:
                session.rollback()
                if attempt == RECORD_ATTEMPTS - 1:
                    raise
                log.warning("%d deliveries done but not yet recorded (%s); retrying",
                            len(self.changes), error.__class__.__name__)
                time.sleep(0.2 * 2 ** attempt)
            else:
                break
        counts: dict[str, int] = {}
        for delivery_id, result in self.results.items():
            state = result.state.value if result.state else "skipped"
            counts[state] = counts.get(state, 0) + 1
            log.debug("delivery %s %s", delivery_id, state)
        log.info("deliveries %s..%s: %s", self.claimed[0].id, self.claimed[-1].id,
                 ", ".join(f"{n} {state}" for state, n in sorted(counts.items())))

    def _write(self, session: Session) -> None:
        # Rows with the same columns go in one statement.
        by_columns: dict[tuple[str, ...], list[dict[str, Any]]] = {}
        for delivery_id, values in self.changes.items():
            by_columns.setdefault(tuple(sorted(values)), []).append({"id": delivery_id, **values})
        for rows in by_columns.values():
            update_each(session, Delivery.__table__, "id", rows)
        for subscriber_id, error in self.reader_errors.items():
            session.execute(update(Subscriber).where(Subscriber.id == subscriber_id)
                            .values(last_delivery_error=error)
                            .execution_options(synchronize_session=False))

    def _set(self, delivery: ClaimedDelivery, state: DeliveryState, error: str | None,
             retry_in: float | None = None, **values: Any) -> None:
        self.results[delivery.id] = DeliveryResult(delivery.id, state, retry_in, error)
        self.changes[delivery.id] = {"state": state, "last_error": error, "updated_at": utcnow(), **values}

    def _note_reader_error(self, delivery: ClaimedDelivery, reply: str) -> None:
        if delivery.subscriber_id is not None:
            self.reader_errors[delivery.subscriber_id] = reply


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
