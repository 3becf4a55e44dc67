"""Reading DSNs (RFC 3464) and ARF complaints (RFC 5965), and classifying them."""

from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText

import pytest

from service.bounce_reports import (
    InvalidBounce,
    MalformedReport,
    NotABounce,
    classify_feedback,
    classify_status,
    parse_report,
    reports_from_json,
)
from service.models import BounceKind
from tests.bounce_messages import (
    MESSAGE_ID,
    READER,
    VERP,
    arf,
    dsn,
    field_block,
    mime_part,
    multipart_report,
    recipient,
)

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
    report = multipart_report("global-delivery-status", VERP, "Undelivered Mail Returned to Sender")
    report.attach(MIMEText("This is the mail system.\n"))
    report.attach(mime_part("message/global-delivery-status",
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
    report = multipart_report("disposition-notification", VERP, "Read: Please confirm")
    report.attach(MIMEText("Your message was read."))
    with pytest.raises(NotABounce, match="disposition-notification"):
        parse_report(report.as_bytes())


def test_a_delivery_status_without_recipients_is_malformed():
    report = multipart_report("delivery-status", VERP, "Undelivered Mail")
    report.attach(mime_part("message/delivery-status",
                            [field_block({"Reporting-MTA": "dns; mx.example.com"})]))
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
