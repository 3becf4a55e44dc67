"""Reading DSNs (RFC 3464) and ARF complaints (RFC 5965), and classifying them.

The builders below make realistic reports with the email package; the
integration tests use them too.
"""

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from email import message_from_bytes, policy
from email.message import Message
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText

import pytest

from service.bounces import (
    InvalidBounce,
    MalformedReport,
    NotABounce,
    classify_feedback,
    classify_status,
    parse_report,
    reports_from_json,
)
from service.mail.message import OutgoingMessage, build_mime
from service.models import BounceKind

VERP = "bounces+d12-0123456789@example.com"
READER = "peggy@example.org"
MESSAGE_ID = "<confirmation.12.20261124100000@example.com>"


def original_message(to: str = READER, message_id: str = MESSAGE_ID) -> bytes:
    """One of our messages, as service.mail builds it."""
    return build_mime(OutgoingMessage(
        mail_from="Marvel News <news@example.com>", to=to, subject="Please confirm your subscription",
        text="Confirm: https://newsletter.example.com/confirm/abc", html="<p>Confirm</p>",
        message_id=message_id, date=datetime(2026, 11, 24, 10, 0, tzinfo=UTC),
    ))


def recipient(address: str, status: str, action: str = "failed", diagnostic: str | None = None
              ) -> dict[str, str]:
    """The per-recipient fields of a DSN, as Postfix writes them."""
    fields = {"Final-Recipient": f"rfc822; {address}", "Original-Recipient": f"rfc822;{address}",
              "Action": action, "Status": status, "Remote-MTA": "dns; mx.example.org"}
    if diagnostic is not None:
        fields["Diagnostic-Code"] = diagnostic
    return fields


def dsn(*recipients: Mapping[str, str], to: str = VERP, original: bytes | None = None,
        returned: str = "headers", per_message: Mapping[str, str] | None = None) -> bytes:
    """A Postfix-style bounce: notification text, delivery-status, the returned original."""
    report = _report("delivery-status", to, "Undelivered Mail Returned to Sender")
    report.attach(MIMEText("This is the mail system at host mx.example.com.\n\n"
                           "I'm sorry to have to inform you that your message could not\n"
                           "be delivered to one or more recipients.\n"))
    blocks = [_block({"Reporting-MTA": "dns; mx.example.com", "X-Postfix-Queue-ID": "4Q1x2y3z",
                      "X-Postfix-Sender": f"rfc822; {to}",
                      "Arrival-Date": "Tue, 24 Nov 2026 10:00:01 +0000 (UTC)", **(per_message or {})})]
    blocks += [_block(fields) for fields in recipients]
    report.attach(_part("message/delivery-status", blocks))
    _attach_original(report, original if original is not None else original_message(), returned)
    return report.as_bytes()


def arf(feedback_type: str = "abuse", *, mail_from: str | None = VERP, rcpt_to: str | None = READER,
        original: bytes | None = None, to: str = "fbl@example.com") -> bytes:
    """A feedback loop report as mailbox providers send them."""
    report = _report("feedback-report", to, "Abuse report")
    report.attach(MIMEText("This is an email abuse report for an email message received from IP\n"
                           "192.0.2.25 on Tue, 24 Nov 2026 10:00:01 +0000.\n"))
    fields = {"Feedback-Type": feedback_type, "User-Agent": "ExampleFBL/1.0", "Version": "1"}
    if mail_from is not None:
        fields["Original-Mail-From"] = f"<{mail_from}>"
    if rcpt_to is not None:
        fields["Original-Rcpt-To"] = f"<{rcpt_to}>"
    fields["Arrival-Date"] = "Tue, 24 Nov 2026 10:00:01 +0000"
    fields["Reported-Domain"] = "example.com"
    report.attach(_part("message/feedback-report", [_block(fields)]))
    _attach_original(report, original if original is not None else original_message(), "message")
    return report.as_bytes()


def _report(report_type: str, to: str, subject: str) -> MIMEMultipart:
    report = MIMEMultipart("report", report_type=report_type, policy=policy.compat32)
    for name, value in (("Return-Path", "<>"), ("Delivered-To", to),
                        ("From", "MAILER-DAEMON@mx.example.com (Mail Delivery System)"),
                        ("To", to), ("Subject", subject), ("Auto-Submitted", "auto-replied"),
                        ("Message-Id", "<20261124100002.ABC@mx.example.com>")):
        report[name] = value
    return report


def _block(fields: Mapping[str, str]) -> Message:
    block = Message()
    for name, value in fields.items():
        block[name] = value
    return block


def _part(content_type: str, payload: Sequence[Message] | str) -> Message:
    part = Message()
    part["Content-Type"] = content_type
    part.set_payload(list(payload) if not isinstance(payload, str) else payload)
    return part


def _attach_original(report: MIMEMultipart, original: bytes, returned: str) -> None:
    if returned == "headers":
        headers = original.split(b"\r\n\r\n", 1)[0].decode().replace("\r\n", "\n")
        report.attach(MIMEText(headers + "\n", "rfc822-headers"))
    elif returned == "message":
        report.attach(_part("message/rfc822", [message_from_bytes(original, policy=policy.compat32)]))


# ------------------------------------------------------------------ DSNs


def test_a_postfix_dsn_for_an_unknown_user_is_a_hard_bounce():
    raw = dsn(recipient(READER, "5.1.1", diagnostic=(
        f"smtp; 550 5.1.1 <{READER}>: Recipient address rejected:\n"
        "    User unknown in virtual mailbox table")))
    [report] = parse_report(raw)
    assert report.kind == BounceKind.HARD
    assert report.recipient == READER
    assert report.status == "5.1.1"
    assert report.diagnostic == (f"smtp; 550 5.1.1 <{READER}>: Recipient address rejected: "
                                 "User unknown in virtual mailbox table")
    assert report.original_message_id == MESSAGE_ID
    assert report.verp_candidates == (VERP,)


def test_a_full_mailbox_that_outlived_the_retries_is_a_soft_bounce():
    raw = dsn(recipient(READER, "4.2.2", diagnostic="smtp; 452 4.2.2 Mailbox full"))
    [report] = parse_report(raw)
    assert (report.kind, report.status) == (BounceKind.SOFT, "4.2.2")


def test_a_delay_warning_is_not_a_bounce_yet():
    raw = dsn(recipient(READER, "4.2.2", action="delayed", diagnostic="smtp; 452 4.2.2 Mailbox full"))
    assert parse_report(raw) == []


def test_a_policy_refusal_is_a_policy_bounce():
    raw = dsn(recipient(READER, "5.7.1", diagnostic=(
        "smtp; 554 5.7.1 Service unavailable; Client host [192.0.2.25] blocked using zen.example.net")))
    [report] = parse_report(raw)
    assert report.kind == BounceKind.POLICY


def test_a_dsn_reports_each_failed_recipient_and_skips_the_others():
    raw = dsn(recipient("a@example.org", "5.1.1"), recipient("b@example.org", "5.2.2"),
              recipient("c@example.org", "4.4.1", action="delayed"),
              recipient("d@example.org", "2.0.0", action="delivered"))
    reports = parse_report(raw)
    assert [(r.recipient, r.kind) for r in reports] == [
        ("a@example.org", BounceKind.HARD), ("b@example.org", BounceKind.SOFT)]
    assert {r.original_message_id for r in reports} == {MESSAGE_ID}


def test_the_status_comes_from_the_diagnostic_when_the_status_field_is_missing():
    fields = recipient(READER, "", diagnostic="smtp; 550 5.1.1 no such user")
    del fields["Status"]
    [report] = parse_report(dsn(fields))
    assert (report.kind, report.status) == (BounceKind.HARD, "5.1.1")


def test_an_ip_address_in_the_diagnostic_is_not_taken_for_a_status():
    fields = recipient(READER, "", diagnostic="smtp; 550 refused by host [10.2.5.1]: no such user")
    del fields["Status"]
    [report] = parse_report(dsn(fields))
    assert (report.kind, report.status) == (BounceKind.SOFT, None)


def test_the_returned_message_may_be_whole_instead_of_headers_only():
    [report] = parse_report(dsn(recipient(READER, "5.1.1"), returned="message"))
    assert report.original_message_id == MESSAGE_ID


def test_a_dsn_without_the_original_still_names_the_recipient():
    [report] = parse_report(dsn(recipient(READER, "5.1.1"), returned="none"))
    assert (report.recipient, report.original_message_id) == (READER, None)


def test_a_truncated_dsn_with_crlf_line_endings_is_read():
    raw = dsn(recipient(READER, "5.1.1")).replace(b"\n", b"\r\n")
    truncated = raw[:raw.rindex(b"\r\n--")]  # the closing boundary is lost
    [report] = parse_report(truncated)
    assert report.kind == BounceKind.HARD


def test_a_utf8_global_delivery_status_is_read():
    report = _report("global-delivery-status", VERP, "Undelivered Mail Returned to Sender")
    report.attach(MIMEText("This is the mail system.\n"))
    report.attach(_part("message/global-delivery-status",
                        "Reporting-MTA: dns; mx.example.com\n\n"
                        "Final-Recipient: utf-8; jürgen@例え.jp\nAction: failed\nStatus: 5.1.1\n"))
    [parsed] = parse_report(report.as_string().encode("utf-8"))
    assert (parsed.recipient, parsed.kind) == ("jürgen@例え.jp", BounceKind.HARD)


# ------------------------------------------------------------------ ARF


def test_an_arf_abuse_report_is_a_complaint():
    [report] = parse_report(arf("abuse"))
    assert report.kind == BounceKind.COMPLAINT
    assert report.recipient == READER
    assert report.original_message_id == MESSAGE_ID
    assert report.verp_candidates[0] == VERP  # Original-Mail-From: the envelope sender of our mail
    assert report.diagnostic == "feedback report: abuse from ExampleFBL/1.0"


def test_an_arf_report_with_a_redacted_recipient_names_the_original_to():
    [report] = parse_report(arf("abuse", rcpt_to=None))
    assert report.recipient == READER


@pytest.mark.parametrize("feedback_type", ["fraud", "virus", "other", "some-future-type"])
def test_other_feedback_types_are_complaints_too(feedback_type):
    [report] = parse_report(arf(feedback_type))
    assert report.kind == BounceKind.COMPLAINT


@pytest.mark.parametrize("feedback_type", ["not-spam", "auth-failure"])
def test_not_spam_and_auth_failure_reports_are_no_complaints(feedback_type):
    assert parse_report(arf(feedback_type)) == []


# ------------------------------------------------------------------ not bounces


def test_a_plain_message_is_not_a_bounce():
    with pytest.raises(NotABounce, match="text/plain"):
        parse_report(b"From: someone@example.org\nTo: bounces@example.com\nSubject: hi\n\nHello!\n")


def test_an_auto_reply_with_attachments_is_not_a_bounce():
    message = MIMEMultipart()
    message["Subject"] = "Out of office"
    message.attach(MIMEText("I am away until Monday."))
    with pytest.raises(NotABounce) as caught:
        parse_report(message.as_bytes())
    assert not isinstance(caught.value, MalformedReport)


def test_a_multipart_report_without_a_boundary_is_malformed():
    raw = (b"From: MAILER-DAEMON@mx.example.com\nMIME-Version: 1.0\n"
           b"Content-Type: multipart/report; report-type=delivery-status\n\nsomething went wrong\n")
    with pytest.raises(MalformedReport, match="boundary"):
        parse_report(raw)


def test_a_multipart_report_whose_parts_are_not_where_the_boundary_says_is_malformed():
    raw = (b"From: MAILER-DAEMON@mx.example.com\nMIME-Version: 1.0\n"
           b'Content-Type: multipart/report; report-type=delivery-status; boundary="XYZ"\n\n'
           b"--ABC\nContent-Type: message/delivery-status\n\nAction: failed\n--ABC--\n")
    with pytest.raises(MalformedReport):
        parse_report(raw)


def test_a_read_receipt_is_not_a_bounce():
    report = _report("disposition-notification", VERP, "Read: Please confirm")
    report.attach(MIMEText("Your message was read."))
    with pytest.raises(NotABounce, match="disposition-notification"):
        parse_report(report.as_bytes())


def test_a_delivery_status_without_recipients_is_malformed():
    report = _report("delivery-status", VERP, "Undelivered Mail")
    report.attach(_part("message/delivery-status", [_block({"Reporting-MTA": "dns; mx.example.com"})]))
    with pytest.raises(MalformedReport, match="Final-Recipient"):
        parse_report(report.as_bytes())


# ------------------------------------------------------------------ classification


@pytest.mark.parametrize(("status", "kind"), [
    ("5.1.1", BounceKind.HARD), ("5.1.2", BounceKind.HARD), ("5.1.10", BounceKind.HARD),
    ("5.0.0", BounceKind.HARD), ("5.2.1", BounceKind.HARD),
    ("5.2.2", BounceKind.SOFT), ("5.2.0", BounceKind.SOFT), ("5.3.4", BounceKind.SOFT),
    ("5.4.4", BounceKind.SOFT), ("4.2.2", BounceKind.SOFT), ("4.4.7", BounceKind.SOFT),
    ("5.7.1", BounceKind.POLICY), ("5.7.26", BounceKind.POLICY), ("4.7.0", BounceKind.POLICY),
    ("5.1.7", BounceKind.POLICY), ("5.1.8", BounceKind.POLICY),
    (None, BounceKind.SOFT), ("", BounceKind.SOFT), ("huh", BounceKind.SOFT),
])
def test_enhanced_status_codes_are_classified(status, kind):
    assert classify_status(status) == kind


def test_feedback_types_are_classified():
    assert classify_feedback("Abuse") == BounceKind.COMPLAINT
    assert classify_feedback("not-spam") is None


# ------------------------------------------------------------------ ESP webhooks


def test_an_esp_bounce_becomes_a_report():
    [report] = reports_from_json({"email": READER, "type": "hard", "status": "5.1.1",
                                  "diagnostic": "550 5.1.1\n user unknown",
                                  "message_id": MESSAGE_ID.strip("<>"), "recipient": VERP})
    assert report.kind == BounceKind.HARD
    assert report.original_message_id == MESSAGE_ID
    assert report.diagnostic == "550 5.1.1 user unknown"
    assert report.verp_candidates == (VERP,)


def test_the_type_of_an_esp_bounce_may_come_from_its_status():
    [report] = reports_from_json([{"email": READER, "status": "5.7.1"}])
    assert report.kind == BounceKind.POLICY


@pytest.mark.parametrize(("body", "field"), [
    ({"email": READER, "type": "bounced"}, "type"),
    ({"email": READER}, "type"),
    ({"email": READER, "type": "hard", "status": "550"}, "status"),
    ({"type": "hard"}, "email"),
    ({"email": "nobody", "type": "hard"}, "email"),
    ({"email": READER, "type": "hard", "colour": "red"}, "colour"),
    ([{"email": READER, "type": "soft"}, {"email": READER, "type": 5}], "[1].type"),
    ([], "body"),
    ("a string", "body"),
])
def test_a_bad_esp_bounce_is_refused_naming_the_field(body, field):
    with pytest.raises(InvalidBounce) as caught:
        reports_from_json(body)
    assert field in caught.value.errors
