"""Bounces and complaints: find the mail a report is about, record it, act on it.

Each report (read by service.bounce_reports) is tied to one of our deliveries
by its VERP address (HMAC signed, so it cannot be forged), else by the
Message-ID of the returned original, else to a subscriber by address alone:
always for an ESP's JSON, for a raw message only while no BOUNCE_ADDRESS is set
(with one, anyone could mail a report naming any reader). Then a hard bounce or
a complaint suppresses the address, soft bounces do once they reach
BOUNCE_SOFT_LIMIT, and policy bounces (the receiver refusing *us*) never touch
the reader: they alert the operator and, in numbers, pause sending.

Logs carry ids, kinds and status codes, never an address.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service.bounce_reports import BounceReport, parse_report
from service.config import Settings
from service.models import (
    Bounce,
    BounceKind,
    Delivery,
    DeliveryState,
    SendingPause,
    Subscriber,
    Suppression,
    SuppressionReason,
    utcnow,
)
from service.pauses import pause_sending
from service.subscriptions import unsubscribe
from service.suppressions import address_hash, canonical_address, suppress, suppression_of, unsuppress
from service.verp import delivery_id_from_verp, looks_like_verp

log = logging.getLogger(__name__)

POLICY_WINDOW = timedelta(hours=1)
# A bounce we cannot tie to a delivery counts once per address, kind and status in
# this window, so an ESP retrying its webhook does not count a soft bounce twice.
REPEAT_WINDOW = timedelta(hours=24)
MAX_DIAGNOSTIC = 1000

_ADDRESS = re.compile(r"\S+@\S+")


@dataclass
class IngestResult:
    reports: int = 0  # reports that asked for action (delay warnings and not-spam are not counted)
    recorded: list[Bounce] = field(default_factory=list)
    unmatched: int = 0  # reports about nothing of ours (unknown address, forged or no VERP address)


# ------------------------------------------------------------------ mapping


@dataclass(frozen=True)
class BounceTarget:
    """What a report is about: a delivery of ours and its subscriber, as far as known."""

    delivery: Delivery | None
    subscriber: Subscriber | None
    matched_by: str  # "verp", "message_id", "recipient", "forged_verp", "unverified" or "nothing"


def find_target(session: Session, settings: Settings, report: BounceReport,
                envelope_recipient: str | None = None) -> BounceTarget:
    """Tie a report to our delivery: by VERP address, else Message-ID, else the address alone.

    An address that claims to be our VERP address but fails the signature check ties
    the report to nothing at all: it is forged (or signed with a key since dropped).
    With BOUNCE_ADDRESS set, a raw report is never tied by the address alone, since
    anyone can mail the bounce address; an ESP's report still is, as the ESP matched it.
    """
    candidates = dict.fromkeys(a.strip() for a in (envelope_recipient, *report.verp_candidates)
                               if a and a.strip())
    if settings.BOUNCE_ADDRESS is not None:
        keys = [settings.SECRET_KEY, *settings.SECRET_KEY_FALLBACKS]
        claimed = [a for a in candidates if looks_like_verp(a, settings.BOUNCE_ADDRESS)]
        verified = [i for i in (delivery_id_from_verp(a, settings.BOUNCE_ADDRESS, keys) for a in claimed)
                    if i is not None]
        for delivery_id in verified:
            delivery = session.get(Delivery, delivery_id)
            if delivery is not None:
                return BounceTarget(delivery, delivery.subscriber, "verp")
        if claimed and not verified:
            return BounceTarget(None, None, "forged_verp")
    if report.original_message_id:
        delivery = session.scalars(select(Delivery).where(
            Delivery.message_id == report.original_message_id).order_by(Delivery.id)).first()
        if delivery is not None:
            return BounceTarget(delivery, delivery.subscriber, "message_id")
    if settings.BOUNCE_ADDRESS is not None and not report.from_esp:
        return BounceTarget(None, None, "unverified")
    if report.recipient:
        subscriber = session.scalars(select(Subscriber).where(
            Subscriber.email == canonical_address(report.recipient))).one_or_none()
        if subscriber is not None:
            return BounceTarget(None, subscriber, "recipient")
    return BounceTarget(None, None, "nothing")


# ------------------------------------------------------------------ recording


def ingest_message(session: Session, settings: Settings, raw: bytes | str,
                   envelope_recipient: str | None = None) -> IngestResult:
    """Parse a raw DSN or ARF message and record every report in it. The caller commits."""
    return record_reports(session, settings, parse_report(raw), envelope_recipient)


def record_reports(session: Session, settings: Settings, reports: Sequence[BounceReport],
                   envelope_recipient: str | None = None) -> IngestResult:
    """Record several reports; those about nothing of ours are counted, not stored."""
    result = IngestResult(reports=len(reports))
    for report in reports:
        bounce = record_bounce(session, settings, report, envelope_recipient=envelope_recipient)
        if bounce is None:
            result.unmatched += 1
        else:
            result.recorded.append(bounce)
    return result


def record_bounce(session: Session, settings: Settings, report: BounceReport, *,
                  envelope_recipient: str | None = None) -> Bounce | None:
    """Store the bounce and act on it; None when it is about nothing of ours.

    The same report twice returns the first row and changes nothing more. The caller commits.
    """
    target = find_target(session, settings, report, envelope_recipient)
    if target.matched_by == "forged_verp":
        log.warning("ignored a %s bounce whose VERP address fails the signature check "
                    "(forged, or signed with a key no longer in SECRET_KEY_FALLBACKS)", report.kind.value)
        return None
    if target.matched_by == "unverified":
        log.warning("ignored a %s bounce (status %s) that names no VERP address or Message-ID of ours: "
                    "with BOUNCE_ADDRESS set, a raw report is not matched by the reader's address alone, "
                    "which anyone could forge", report.kind.value, report.status)
        return None
    delivery, subscriber = target.delivery, target.subscriber
    email = subscriber.email if subscriber is not None else report.recipient
    if (delivery is None and subscriber is None) or not email:
        log.info("ignored a %s bounce (status %s) about none of our deliveries or subscribers",
                 report.kind.value, report.status)
        return None

    _hold(session, delivery, subscriber)
    digest = address_hash(email)
    existing = _same_bounce(session, report.kind, digest, delivery, report.status)
    if existing is not None:
        log.info("bounce %s received again; counted once", existing.id)
        return existing
    bounce = Bounce(kind=report.kind, email_hash=digest, delivery_id=delivery.id if delivery else None,
                    subscriber_id=subscriber.id if subscriber else None,
                    status=report.status[:20] if report.status else None,
                    # Servers quote the address in their replies; we keep only its hash.
                    diagnostic=_ADDRESS.sub("<address>", report.diagnostic)[:MAX_DIAGNOSTIC]
                    if report.diagnostic else None)
    try:
        with session.begin_nested():
            session.add(bounce)
    except IntegrityError:
        # uq_bounces_delivery_kind: another transaction recorded this delivery's bounce
        # between our look and our insert. Theirs stands, and acted already.
        existing = _same_bounce(session, report.kind, digest, delivery, report.status)
        if delivery is None or existing is None:
            raise
        log.info("bounce %s recorded concurrently; counted once", existing.id)
        return existing
    log.info("bounce %s recorded: %s, status %s, delivery %s, subscriber %s, matched by %s",
             bounce.id, bounce.kind.value, bounce.status, bounce.delivery_id, bounce.subscriber_id,
             target.matched_by)
    _act(session, settings, bounce, email, delivery, subscriber)
    return bounce


def _act(session: Session, settings: Settings, bounce: Bounce, email: str,
         delivery: Delivery | None, subscriber: Subscriber | None) -> None:
    detail = f"{bounce.kind.value} bounce {bounce.id}, status {bounce.status or 'none'}"
    if subscriber is not None and bounce.kind in (BounceKind.HARD, BounceKind.SOFT):
        subscriber.last_delivery_error = bounce.diagnostic or detail
    if bounce.kind in (BounceKind.HARD, BounceKind.COMPLAINT):
        reason = SuppressionReason.HARD_BOUNCE if bounce.kind == BounceKind.HARD \
            else SuppressionReason.COMPLAINT
        entry = suppress(session, email, reason, detail)
        log.info("address %s… suppressed (%s) after bounce %s", entry.email_hash[:12],
                 entry.reason.value, bounce.id)
        if delivery is not None and delivery.state == DeliveryState.SENT:
            delivery.state = DeliveryState.BOUNCED
            delivery.last_error = detail
        if bounce.kind == BounceKind.COMPLAINT and subscriber is not None:
            unsubscribe(session, subscriber.id)
            log.info("subscriber %s unsubscribed after complaint %s", subscriber.id, bounce.id)
    elif bounce.kind == BounceKind.SOFT and subscriber is not None:
        session.execute(update(Subscriber).where(Subscriber.id == subscriber.id)
                        .values(soft_bounce_count=Subscriber.soft_bounce_count + 1)
                        .execution_options(synchronize_session=False))
        session.refresh(subscriber, ["soft_bounce_count"])
        if subscriber.soft_bounce_count >= settings.BOUNCE_SOFT_LIMIT:
            entry = suppress(session, email, SuppressionReason.SOFT_BOUNCES,
                             f"{subscriber.soft_bounce_count} soft bounces, the last {bounce.id}")
            log.info("address %s… suppressed (%s) after %s soft bounces", entry.email_hash[:12],
                     entry.reason.value, subscriber.soft_bounce_count)
    elif bounce.kind == BounceKind.POLICY:
        _alert_policy_bounce(session, settings, bounce)


def _alert_policy_bounce(session: Session, settings: Settings, bounce: Bounce) -> None:
    said = bounce.diagnostic or "nothing"
    log.error("policy bounce %s (status %s, delivery %s): a receiving server refused our mail for "
              "policy reasons, not because of the reader. Check the sending IP's reputation, "
              "SPF/DKIM/DMARC and the content. It said: %s", bounce.id, bounce.status,
              bounce.delivery_id, said)
    threshold = settings.POLICY_PAUSE_THRESHOLD
    if not threshold:
        return
    count = policy_bounce_count(session)
    if count >= threshold:
        pause = pause_sending(session, f"{count} policy bounces within an hour (the last: bounce "
                                       f"{bounce.id}, status {bounce.status or 'none'})")
        log.error("sending paused (pause %s): %s policy bounces within an hour reached "
                  "POLICY_PAUSE_THRESHOLD=%s; fix the cause, then run 'newsletter sending resume'",
                  pause.id, count, threshold)


def policy_bounce_count(session: Session) -> int:
    """Policy bounces that count toward a pause: those of the last hour, and only
    those since the operator last resumed, so resuming is not undone at once."""
    since = utcnow() - POLICY_WINDOW
    resumed = session.scalar(select(func.max(SendingPause.resumed_at)))
    if resumed is not None and resumed > since:
        since = resumed
    return session.scalar(select(func.count()).select_from(Bounce).where(
        Bounce.kind == BounceKind.POLICY, Bounce.received_at >= since)) or 0


def _same_bounce(session: Session, kind: BounceKind, digest: str, delivery: Delivery | None,
                 status: str | None) -> Bounce | None:
    """The row of this bounce if it was recorded before: same delivery and kind, or, with
    no delivery known, same address, kind and status within REPEAT_WINDOW."""
    query = select(Bounce).where(Bounce.kind == kind).order_by(Bounce.id)
    if delivery is not None:
        query = query.where(Bounce.delivery_id == delivery.id)
    else:
        query = query.where(Bounce.email_hash == digest, Bounce.delivery_id.is_(None),
                            Bounce.received_at >= utcnow() - REPEAT_WINDOW,
                            Bounce.status == status if status else Bounce.status.is_(None))
    return session.scalars(query).first()


def _hold(session: Session, delivery: Delivery | None, subscriber: Subscriber | None) -> None:
    """Hold the subscriber's row (or the delivery's) until the caller commits, so two copies
    of one bounce arriving at once are recorded one after the other and the second finds
    the first. A write that changes nothing does it on both databases: a row lock on
    PostgreSQL, the single write lock on SQLite (where SELECT ... FOR UPDATE does nothing)."""
    if subscriber is not None:
        statement = update(Subscriber).where(Subscriber.id == subscriber.id) \
            .values(soft_bounce_count=Subscriber.soft_bounce_count)
    else:
        assert delivery is not None
        statement = update(Delivery).where(Delivery.id == delivery.id).values(updated_at=Delivery.updated_at)
    session.execute(statement.execution_options(synchronize_session=False))
    if delivery is not None:
        session.refresh(delivery)


# ------------------------------------------------------------------ operators


def find_suppression(session: Session, email: str) -> Suppression | None:
    """The suppression entry of this address, if it has one."""
    return suppression_of(session, email)


def lift_suppression(session: Session, email: str) -> bool:
    """Take the address off the list (an operator's decision) and forget its soft bounces,
    so the next one does not suppress it again at once. True if it was listed."""
    removed = unsuppress(session, email)
    session.execute(update(Subscriber).where(Subscriber.email == canonical_address(email))
                    .values(soft_bounce_count=0).execution_options(synchronize_session=False))
    return removed
