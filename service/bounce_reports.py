"""Bounce and complaint reports: read them, and classify what they say.

Reports arrive as delivery status notifications (RFC 3464 DSNs) and abuse
feedback reports (RFC 5965 ARF), raw from the operator's MTA, or already parsed
by an ESP and posted as JSON. This module turns either into BounceReport values
and classifies them by status code or feedback type; it needs no database.
service.bounces ties the reports to our deliveries and acts on them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from email import message_from_bytes, policy
from email.message import Message
from email.parser import BytesHeaderParser
from email.utils import getaddresses, parseaddr
from typing import Any

from service.errors import InvalidInput
from service.models import BounceKind

MAX_BATCH = 1000

# An enhanced status code, but not the tail of an IP address such as [192.0.2.5.1].
_STATUS_CODE = re.compile(r"(?<![\d.])([245])\.(\d{1,3})\.(\d{1,3})(?!\.?\d)")
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
    # True when an ESP parsed the bounce and matched it to the address itself; False for a
    # raw message, which anyone can send to the bounce address.
    from_esp: bool = False


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
        from_esp=True,
    )
