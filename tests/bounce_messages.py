"""Realistic bounce and complaint reports, built with the email package, for the tests.

``dsn`` makes a Postfix-style delivery status notification (RFC 3464), ``arf`` a
feedback loop complaint (RFC 5965); both return the original they are about.
"""

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from email import message_from_bytes, policy
from email.message import Message
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText

from service.mail.message import OutgoingMessage, build_mime

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
    report = multipart_report("delivery-status", to, "Undelivered Mail Returned to Sender")
    report.attach(MIMEText("This is the mail system at host mx.example.com.\n\n"
                           "I'm sorry to have to inform you that your message could not\n"
                           "be delivered to one or more recipients.\n"))
    blocks = [field_block({"Reporting-MTA": "dns; mx.example.com", "X-Postfix-Queue-ID": "4Q1x2y3z",
                      "X-Postfix-Sender": f"rfc822; {to}",
                      "Arrival-Date": "Tue, 24 Nov 2026 10:00:01 +0000 (UTC)", **(per_message or {})})]
    blocks += [field_block(fields) for fields in recipients]
    report.attach(mime_part("message/delivery-status", blocks))
    _attach_original(report, original if original is not None else original_message(), returned)
    return report.as_bytes()


def arf(feedback_type: str = "abuse", *, mail_from: str | None = VERP, rcpt_to: str | None = READER,
        original: bytes | None = None, to: str = "fbl@example.com") -> bytes:
    """A feedback loop report as mailbox providers send them."""
    report = multipart_report("feedback-report", to, "Abuse report")
    report.attach(MIMEText("This is an email abuse report for an email message received from IP\n"
                           "192.0.2.25 on Tue, 24 Nov 2026 10:00:01 +0000.\n"))
    fields = {"Feedback-Type": feedback_type, "User-Agent": "ExampleFBL/1.0", "Version": "1"}
    if mail_from is not None:
        fields["Original-Mail-From"] = f"<{mail_from}>"
    if rcpt_to is not None:
        fields["Original-Rcpt-To"] = f"<{rcpt_to}>"
    fields["Arrival-Date"] = "Tue, 24 Nov 2026 10:00:01 +0000"
    fields["Reported-Domain"] = "example.com"
    report.attach(mime_part("message/feedback-report", [field_block(fields)]))
    _attach_original(report, original if original is not None else original_message(), "message")
    return report.as_bytes()


def multipart_report(report_type: str, to: str, subject: str) -> MIMEMultipart:
    """An empty multipart/report as a mail server sends it to ``to``; attach the parts."""
    report = MIMEMultipart("report", report_type=report_type, policy=policy.compat32)
    for name, value in (("Return-Path", "<>"), ("Delivered-To", to),
                        ("From", "MAILER-DAEMON@mx.example.com (Mail Delivery System)"),
                        ("To", to), ("Subject", subject), ("Auto-Submitted", "auto-replied"),
                        ("Message-Id", "<20261124100002.ABC@mx.example.com>")):
        report[name] = value
    return report


def field_block(fields: Mapping[str, str]) -> Message:
    """One block of report fields (per message or per recipient)."""
    block = Message()
    for name, value in fields.items():
        block[name] = value
    return block


def mime_part(content_type: str, payload: Sequence[Message] | str) -> Message:
    """A part of this type holding field blocks, a message, or text."""
    part = Message()
    part["Content-Type"] = content_type
    part.set_payload(list(payload) if not isinstance(payload, str) else payload)
    return part


def _attach_original(report: MIMEMultipart, original: bytes, returned: str) -> None:
    if returned == "headers":
        headers = original.split(b"\r\n\r\n", 1)[0].decode().replace("\r\n", "\n")
        report.attach(MIMEText(headers + "\n", "rfc822-headers"))
    elif returned == "message":
        report.attach(mime_part("message/rfc822", [message_from_bytes(original, policy=policy.compat32)]))
