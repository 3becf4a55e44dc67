from datetime import UTC, datetime, timedelta, timezone
from email import message_from_bytes, policy

import pytest

from service.mail.message import EncodedBody, OutgoingMessage, build_mime, make_message_id, qp_piece

LONG_URL = "https://newsletter.example.com/unsubscribe/" + "eyJzaWQiOjF9" * 20


def _message(**changes) -> OutgoingMessage:
    fields = dict(
        mail_from="Marvel News <news@example.com>",
        to="reader@example.com",
        subject="Confirm your subscription",
        text="Hello,\nplease confirm.\n",
        html="<p>Hello, <b>please</b> confirm.</p>",
        message_id=make_message_id("example.com", "confirmation.1"),
        date=datetime(2026, 11, 25, 12, 0, tzinfo=UTC),
        extra_headers=(("List-Unsubscribe", f"<{LONG_URL}>"),
                       ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click")),
    )
    fields.update(changes)
    return OutgoingMessage(**fields)


def _parse(raw: bytes):
    return message_from_bytes(raw, policy=policy.default)


def _content(part) -> str:
    """Decoded body with the CRLF hard line breaks of quoted-printable folded to LF."""
    return part.get_content().replace("\r\n", "\n")


def test_a_message_is_multipart_alternative_text_first_then_html():
    parsed = _parse(build_mime(_message()))
    assert parsed.get_content_type() == "multipart/alternative"
    parts = list(parsed.iter_parts())
    assert [p.get_content_type() for p in parts] == ["text/plain", "text/html"]
    for part in parts:
        assert part.get_content_charset() == "utf-8"
        assert part["Content-Transfer-Encoding"] == "quoted-printable"
    assert _content(parts[0]) == "Hello,\nplease confirm.\n"
    assert "<b>please</b>" in _content(parts[1])


def test_every_line_ends_with_crlf_and_stays_short():
    raw = build_mime(_message(text="word " * 400, html="<p>" + "é" * 500 + "</p>"))
    lines = raw.split(b"\r\n")
    assert b"\n" not in b"".join(lines)
    assert max(len(line) for line in lines) <= 998
    body = raw.split(b"\r\n\r\n", 1)[1]
    assert max(len(line) for line in body.split(b"\r\n")) <= 76


def test_non_ascii_text_survives_quoted_printable():
    text = "Grüße from Wakanda — ünïcödé ✓\n"
    parsed = _parse(build_mime(_message(text=text, subject="Grüße: Marvel News ✓", html="<p>✓</p>")))
    assert parsed["Subject"] == "Grüße: Marvel News ✓"
    assert _content(parsed.get_body(("plain",))) == text
    assert b"8bit" not in build_mime(_message(text=text))


def test_date_and_message_id_are_present():
    parsed = _parse(build_mime(_message()))
    assert parsed["Message-ID"] == "<confirmation.1@example.com>"
    assert parsed["Date"] == "Wed, 25 Nov 2026 12:00:00 +0000"


def test_long_list_unsubscribe_header_is_written_exactly_once_and_never_encoded():
    raw = build_mime(_message())
    header_block = raw.split(b"\r\n\r\n", 1)[0].decode("ascii")
    assert f"List-Unsubscribe: <{LONG_URL}>\r\n" in header_block + "\r\n"
    assert header_block.count("List-Unsubscribe:") == 1
    assert header_block.count("List-Unsubscribe-Post:") == 1
    assert "=?" not in header_block


def test_a_line_break_in_a_header_is_refused():
    with pytest.raises(ValueError, match="line break"):
        build_mime(_message(extra_headers=(("X-Test", "a\r\nBcc: victim@example.com"),)))


def test_the_display_name_of_the_sender_may_be_non_ascii():
    parsed = _parse(build_mime(_message(mail_from="Café Newsletter <news@example.com>")))
    assert parsed["From"].addresses[0].display_name == "Café Newsletter"
    assert parsed["From"].addresses[0].addr_spec == "news@example.com"


def test_a_generated_message_id_is_unique_and_on_our_domain():
    first, second = make_message_id("example.com"), make_message_id("example.com")
    assert first != second
    assert first.startswith("<") and first.endswith("@example.com>")


def test_a_very_long_subject_is_folded_within_the_line_limit():
    for subject in ("x" * 1000, "日本" * 150, "Confirm your subscription to " + ", ".join(["Topic"] * 300)):
        raw = build_mime(_message(subject=subject))
        assert max(len(line) for line in raw.split(b"\r\n")) <= 998
        assert _parse(raw)["Subject"] == " ".join(subject.split())


@pytest.mark.parametrize("length", range(70, 80))
def test_a_piece_ends_in_a_soft_break_that_never_makes_its_line_too_long(length):
    for text in ("a" * length, "é" * (length // 3) + "a" * (length % 3), "a" * (length - 1) + " "):
        encoded = qp_piece(text)
        assert encoded.endswith(b"=\r\n")
        assert max(len(line) for line in encoded.split(b"\r\n")) <= 76, (text, encoded)
        assert EncodedBody.joined([encoded, qp_piece("!")]).decoded() == text + "!"


def test_a_piece_that_ends_a_line_needs_no_soft_break():
    assert qp_piece("Hello\n") == b"Hello\r\n"
    assert qp_piece("") == b""


@pytest.mark.parametrize("text", [
    ".starts with a dot\n.\n..\n. \nend.",
    "x" * 75 + "." * 300,  # soft breaks fall right before dots, again and again
    "é" * 25 + "." + "=" * 100,  # escapes around the cut
])
def test_no_line_starts_with_a_dot_and_the_text_comes_back(text):
    raw = build_mime(_message(text=text, html=text))
    assert not raw.startswith(b".") and b"\r\n." not in raw
    body = raw.split(b"\r\n\r\n", 1)[1]
    assert max(len(line) for line in body.split(b"\r\n")) <= 76
    text_part, html_part = _parse(raw).iter_parts()
    assert _content(text_part) == _content(html_part) == text


@pytest.mark.parametrize("before", range(66, 82))
@pytest.mark.parametrize("after", [0, 1, 2, 5])
def test_no_piece_starts_a_line_with_a_dot_wherever_its_last_line_is_cut(before, after):
    """A piece's last line too long for its soft break is cut 73 characters in; what is
    moved to a line of its own may start with a dot (an address ending in '.co.uk')."""
    text = "a" * before + "." + "uk"[:after] + "x" * max(0, after - 2)
    piece = qp_piece(text)
    assert not piece.startswith(b".") and b"\r\n." not in piece
    assert max(len(line) for line in piece.split(b"\r\n")) <= 76
    assert EncodedBody.joined([piece, qp_piece("!")]).decoded() == text + "!"


def test_the_date_header_of_one_instant_in_two_zones_names_each_zone():
    utc = datetime(2026, 11, 29, 3, 0, tzinfo=UTC)
    paris = utc.astimezone(timezone(timedelta(hours=1)))
    headers = [_parse(build_mime(_message(date=date)))["Date"] for date in (utc, paris, utc)]
    assert headers == ["Sun, 29 Nov 2026 03:00:00 +0000", "Sun, 29 Nov 2026 04:00:00 +0100",
                       "Sun, 29 Nov 2026 03:00:00 +0000"]
