"""Bounces and complaints: read the reports, find the mail they are about, act on them.

Reports arrive as delivery status notifications (RFC 3464 DSNs) and abuse
feedback reports (RFC 5965 ARF), raw from the operator's MTA or already parsed
by an ESP. Each is tied to one of our deliveries by its VERP address (HMAC
signed, so it cannot be forged), else by the Message-ID of the returned
original, else to a subscriber by address alone. Then a hard bounce or a
complaint suppresses the address, soft bounces do once they reach
BOUNCE_SOFT_LIMIT, and policy bounces (the receiver refusing *us*) never touch
the reader: they alert the operator and, in numbers, pause sending.

Logs carry ids, kinds and status codes, never an address.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from email import message_from_bytes, policy
from email.message import Message
from email.parser import BytesHeaderParser
from email.utils import getaddresses, parseaddr
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from service.config import Settings
from service.errors import InvalidInput
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
from service.suppressions import address_hash, suppress, unsuppress
from service.verp import delivery_id_from_verp

log = logging.getLogger(__name__)

POLICY_WINDOW = timedelta(hours=1)
# A bounce we cannot tie to a delivery counts once per address, kind and status in
# this window, so an ESP retrying its webhook does not count a soft bounce twice.
REPEAT_WINDOW = timedelta(hours=24)
MAX_DIAGNOSTIC = 1000
MAX_BATCH = 1000

# An enhanced status code, but not the tail of an IP address such as [192.0.2.5.1].
_STATUS_CODE = re.compile(r"(?<![\d.])([245])\.(\d{1,3})\.(\d{1,3})(?!\.?\d)")
_ADDRESS = re.compile(r"\S+@\S+")
_DSN_PARTS = ("message/delivery-status", "message/global-delivery-status")
_ORIGINAL_PARTS = ("message/rfc822", "message/global", "text/rfc822-headers", "message/global-headers")
# Where MTAs record the address a report was delivered to: our VERP address, if it is one.
_ENVELOPE_HEADERS = ("Delivered-To", "X-Original-To", "Envelope-To", "X-Envelope-To", "To")
# Feedback types that are not a reader's complaint: a reader saying "not spam", and
# DMARC/SPF/DKIM failure reports (RFC 6591), which are about the sending domain.
_NOT_COMPLAINTS = ("not-spam", "auth-failure")


class NotABounce(Exception):
    """The message is neither a delivery status notification nor a complaint report."""


class MalformedReport(NotABounce):
    """The message claims to be a report, but its parts cannot be read."""


class InvalidBounce(InvalidInput):
    """A bounce given as fields (an ESP webhook) was refused; ``errors`` names the fields."""


@dataclass(frozen=True)
class BounceReport:
    """One recipient's bounce, or one complaint, as a report states it."""

    kind: BounceKind
    recipient: str | None = None  # the reader's address as the report names it
    status: str | None = None  # enhanced status code, e.g. "5.1.1"
    diagnostic: str | None = None
    original_message_id: str | None = None  # Message-ID of the mail that bounced, "<...>"
    verp_candidates: tuple[str, ...] = ()  # addresses the report went to; one may be our VERP address


@dataclass
class IngestResult:
    reports: int = 0  # reports that asked for action (delay warnings and not-spam are not counted)
    recorded: list[Bounce] = field(default_factory=list)
    unmatched: int = 0  # reports about nothing of ours (unknown address, forged VERP address)


# ------------------------------------------------------------------ classification


def classify_status(status: str | None) -> BounceKind:
    """The kind of a failed delivery, from its enhanced status code (RFC 3463).

    - x.7.x (security or policy), and 5.1.7/5.1.8 (our *sender* address refused):
      POLICY. The receiver refused us, not the reader; also for 4.7.x, which is a
      temporary policy refusal (rate limits, reputation) that outlived the retries.
    - 5.0.0 (what Postfix reports for a bare "550" reply), 5.1.x (no such mailbox or
      domain) and 5.2.1 (mailbox disabled): HARD.
    - Anything else, including 4.x.x, 5.2.2 (mailbox full), other 5.x.x and no code
      at all: SOFT. Conservative: an address is dropped only after BOUNCE_SOFT_LIMIT
      of these, so one misclassified bounce never loses a reader.
    """
    match = _STATUS_CODE.search(status or "")
    if match is None:
        return BounceKind.SOFT
    klass, subject, detail = match[1], int(match[2]), int(match[3])
    if subject == 7 or (klass == "5" and subject == 1 and detail in (7, 8)):
        return BounceKind.POLICY
    if klass == "5" and (subject == 1 or (subject, detail) in ((0, 0), (2, 1))):
        return BounceKind.HARD
    return BounceKind.SOFT


def classify_feedback(feedback_type: str) -> BounceKind | None:
    """COMPLAINT for an ARF report (abuse, fraud, virus, other, and unknown types), None for
    the types that are no complaint (not-spam, auth-failure)."""
    return None if feedback_type.strip().lower() in _NOT_COMPLAINTS else BounceKind.COMPLAINT


# ------------------------------------------------------------------ parsing


def parse_report(raw: bytes | str) -> list[BounceReport]:
    """The reports in a raw DSN or ARF message, one per failed recipient or complaint.

    Delay warnings (Action: delayed) are left out: the MTA is still trying, and a
    final failure follows if it gives up; counting both would count one message
    twice. So are success notices, not-spam and auth-failure reports: the list may
    be empty. Raises NotABounce (MalformedReport for a broken one) otherwise.
    """
    data = raw.encode("utf-8", "surrogateescape") if isinstance(raw, str) else raw
    message = message_from_bytes(data, policy=policy.default)
    content_type = message.get_content_type()
    if not message.is_multipart():
        if content_type == "multipart/report":
            raise MalformedReport("a multipart/report whose parts cannot be found (no MIME boundary)")
        raise NotABounce(f"a {content_type} message, not a multipart/report")
    parts = list(message.iter_parts())
    original = _original_headers(parts)
    envelope = [*_header_addresses(message, _ENVELOPE_HEADERS)]
    for part in parts:
        if part.get_content_type() in _DSN_PARTS:
            return _dsn_reports(part, original, envelope)
        if part.get_content_type() == "message/feedback-report":
            return _arf_reports(part, original, envelope)
    if content_type == "multipart/report":
        report_type = message.get_param("report-type") or "none"
        raise MalformedReport(f"a multipart/report (report-type={report_type}) with no delivery-status "
                              f"or feedback-report part")
    raise NotABounce(f"a {content_type} message without a delivery-status or feedback-report part")


def _dsn_reports(part: Message, original: Message | None, envelope: list[str]) -> list[BounceReport]:
    blocks = _status_blocks(part)
    recipients = [b for b in blocks if _field(b, "Final-Recipient") or _field(b, "Original-Recipient")]
    if not recipients:
        raise MalformedReport("the delivery-status part names no recipient (Final-Recipient)")
    candidates = _unique([*envelope, *_field_addresses(blocks[0], "X-Postfix-Sender"),
                          *_header_addresses(original, ("Return-Path",))])
    message_id = _message_id(original)
    reports = []
    for block in recipients:
        diagnostic = _field(block, "Diagnostic-Code")
        status_match = _STATUS_CODE.search(_field(block, "Status") or "") or \
            _STATUS_CODE.search(diagnostic or "")
        status = status_match[0] if status_match else None
        action = next(iter((_field(block, "Action") or "").lower().split()), "")  # "failed (bad address)"
        failed = action == "failed" or (not action and status is not None and status[0] in "45")
        if not failed:
            continue
        recipient = _typed_address(_field(block, "Original-Recipient")) or \
            _typed_address(_field(block, "Final-Recipient"))
        reports.append(BounceReport(classify_status(status), recipient, status, diagnostic,
                                    message_id, candidates))
    return reports


def _arf_reports(part: Message, original: Message | None, envelope: list[str]) -> list[BounceReport]:
    payload = part.get_payload()
    fields = payload[0] if isinstance(payload, list) and payload else None
    feedback_type = _field(fields, "Feedback-Type") if fields is not None else None
    if fields is None or not feedback_type:
        raise MalformedReport("the feedback-report part has no Feedback-Type")
    kind = classify_feedback(feedback_type)
    if kind is None:
        return []
    candidates = _unique([*_field_addresses(fields, "Original-Mail-From"), *envelope,
                          *_header_addresses(original, ("Return-Path",))])
    recipients: list[str | None] = [*_field_addresses(fields, "Original-Rcpt-To")] or \
        [*_header_addresses(original, ("To",))][:1] or [None]
    source = _field(fields, "Reporting-MTA") or _field(fields, "User-Agent")
    diagnostic = f"feedback report: {feedback_type.lower()}" + (f" from {source}" if source else "")
    return [BounceReport(kind, recipient, None, diagnostic, _message_id(original), candidates)
            for recipient in recipients]


def _status_blocks(part: Message) -> list[Message]:
    """The field blocks of a delivery-status part: per message first, then per recipient."""
    payload = part.get_payload()
    if not isinstance(payload, list) or not payload:
        raise MalformedReport("the delivery-status part is empty")
    if part.get_content_type() == "message/delivery-status":
        return payload
    # message/global-delivery-status is parsed like any message/*: the first block
    # became the headers of a message whose body holds the other blocks.
    first, rest = payload[0], payload[0].get_payload(decode=True)
    chunks = re.split(rb"\r?\n[ \t]*\r?\n", rest) if isinstance(rest, bytes) else []
    parser = BytesHeaderParser(policy=policy.default)
    return [first, *(parser.parsebytes(chunk) for chunk in chunks if chunk.strip())]


def _original_headers(parts: Sequence[Message]) -> Message | None:
    """The headers of the returned original message, if the report includes them."""
    for part in parts:
        if part.get_content_type() not in _ORIGINAL_PARTS:
            continue
        payload = part.get_payload()
        if isinstance(payload, list):
            return payload[0] if payload else None
        data = part.get_payload(decode=True)
        if isinstance(data, bytes):
            return BytesHeaderParser(policy=policy.default).parsebytes(data)
    return None


def _field(block: Message | None, name: str) -> str | None:
    """The first such header or DSN field, unfolded; None when absent or empty."""
    return next(iter(_all_fields(block, name)), None) or None


def _all_fields(block: Message | None, name: str) -> list[str]:
    """Raw values, unfolded, as text safe to store: undecodable bytes are replaced, not raised.

    Read raw rather than through the header registry, which can choke on broken headers.
    """
    if block is None:
        return []
    return [re.sub(r"\s+", " ", str(value)).strip().encode("utf-8", "surrogateescape")
            .decode("utf-8", "replace") for key, value in block.raw_items() if key.lower() == name.lower()]


def _header_addresses(block: Message | None, names: Iterable[str]) -> Iterable[str]:
    for name in names:
        for _, address in getaddresses(_all_fields(block, name)):
            if "@" in address:
                yield address


def _field_addresses(block: Message | None, name: str) -> list[str]:
    return [a for a in (_typed_address(v) for v in _all_fields(block, name)) if a]


def _typed_address(value: str | None) -> str | None:
    """The address in a DSN field such as "rfc822; reader@example.com" or "<reader@example.com>"."""
    if not value:
        return None
    address = parseaddr(value.split(";", 1)[-1].strip())[1] or value.split(";", 1)[-1].strip(" <>")
    return address if "@" in address else None


def _message_id(original: Message | None) -> str | None:
    value = _field(original, "Message-ID")
    if not value:
        return None
    match = re.search(r"<[^<>\s]+>", value)
    return match[0] if match else f"<{value.strip('<> ')}>"


def _unique(addresses: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(a.strip() for a in addresses if a and a.strip()))


def reports_from_json(body: Any) -> list[BounceReport]:
    """Reports from an ESP webhook that parsed the bounce itself: one object or a list of them.

    Fields: email (the reader), type (hard, soft, complaint, policy; or left out and
    derived from status), status, diagnostic, message_id (ours, the original's
    Message-ID) and recipient (the VERP address the bounce went to). Raises InvalidBounce.
    """
    items = body if isinstance(body, list) else [body]
    if not items or len(items) > MAX_BATCH:
        raise InvalidBounce({"body": f"send a bounce object or a list of 1 to {MAX_BATCH} of them"})
    reports, errors = [], {}
    for index, item in enumerate(items):
        prefix = f"[{index}]." if isinstance(body, list) else ""
        try:
            reports.append(_report_from_mapping(item))
        except InvalidBounce as invalid:
            errors.update({f"{prefix}{name}": message for name, message in invalid.errors.items()})
    if errors:
        raise InvalidBounce(errors)
    return reports


def _report_from_mapping(item: Any) -> BounceReport:
    if not isinstance(item, dict):
        raise InvalidBounce({"body": "each bounce must be a JSON object"})
    errors = {name: "unknown field" for name in sorted(set(item) - {
        "email", "type", "status", "diagnostic", "message_id", "recipient"})}
    values: dict[str, str | None] = {}
    for name, limit in (("email", 320), ("type", 20), ("status", 20), ("diagnostic", 10_000),
                        ("message_id", 255), ("recipient", 320)):
        value = item.get(name)
        if value is not None and (not isinstance(value, str) or len(value) > limit):
            errors[name] = f"must be a string of at most {limit} characters"
            value = None
        values[name] = (value.strip() or None) if isinstance(value, str) else None
    for name in ("email", "recipient"):
        if "@" not in (values[name] or "@"):
            errors[name] = "must be an email address"
    status_match = _STATUS_CODE.fullmatch(values["status"] or "")
    if values["status"] and status_match is None:
        errors["status"] = "must be an enhanced status code such as 5.1.1"
    kinds = {kind.value: kind for kind in BounceKind}
    if values["type"] is not None and values["type"].lower() not in kinds:
        errors["type"] = f"must be one of {', '.join(kinds)}"
    if values["type"] is None and not values["status"] and "status" not in errors:
        errors["type"] = "give a type (or a status to derive it from)"
    if not (values["email"] or values["message_id"] or values["recipient"]):
        errors.setdefault("email", "give the bounced address (or a message_id or VERP recipient)")
    if errors:
        raise InvalidBounce(errors)
    kind = kinds[values["type"].lower()] if values["type"] else classify_status(values["status"])
    message_id = values["message_id"]
    return BounceReport(
        kind=kind, recipient=values["email"], status=values["status"],
        diagnostic=re.sub(r"\s+", " ", values["diagnostic"]) if values["diagnostic"] else None,
        original_message_id=f"<{message_id.strip('<>')}>" if message_id else None,
        verp_candidates=_unique([values["recipient"] or ""]),
    )


# ------------------------------------------------------------------ mapping


@dataclass(frozen=True)
class BounceTarget:
    """What a report is about: a delivery of ours and its subscriber, as far as known."""

    delivery: Delivery | None
    subscriber: Subscriber | None
    matched_by: str  # "verp", "message_id", "recipient", "forged_verp" or "nothing"


def find_target(session: Session, settings: Settings, report: BounceReport,
                envelope_recipient: str | None = None) -> BounceTarget:
    """Tie a report to our delivery: by VERP address, else Message-ID, else the address alone.

    An address that claims to be our VERP address but fails the signature check ties
    the report to nothing at all: it is forged (or signed with a key since dropped).
    """
    candidates = _unique([envelope_recipient or "", *report.verp_candidates])
    if settings.BOUNCE_ADDRESS is not None:
        keys = [settings.SECRET_KEY, *settings.SECRET_KEY_FALLBACKS]
        claimed = [a for a in candidates if _claims_verp(a, settings.BOUNCE_ADDRESS)]
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
    if report.recipient:
        subscriber = session.scalars(select(Subscriber).where(
            Subscriber.email == report.recipient.strip().lower())).one_or_none()
        if subscriber is not None:
            return BounceTarget(None, subscriber, "recipient")
    return BounceTarget(None, None, "nothing")


def _claims_verp(address: str, bounce_address: str) -> bool:
    local, _, domain = bounce_address.lower().partition("@")
    their_local, _, their_domain = address.strip().strip("<>").lower().rpartition("@")
    return their_domain == domain and their_local.startswith(f"{local}+")


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
                    diagnostic=report.diagnostic[:MAX_DIAGNOSTIC] if report.diagnostic else None)
    session.add(bounce)
    session.flush()
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
    said = _ADDRESS.sub("<address>", bounce.diagnostic or "nothing")
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
    return session.scalars(select(Suppression).where(Suppression.email_hash == address_hash(email))
                           ).one_or_none()


def lift_suppression(session: Session, email: str) -> bool:
    """Take the address off the list (an operator's decision) and forget its soft bounces,
    so the next one does not suppress it again at once. True if it was listed."""
    removed = unsuppress(session, email)
    session.execute(update(Subscriber).where(Subscriber.email == email.strip().lower())
                    .values(soft_bounce_count=0).execution_options(synchronize_session=False))
    return removed
