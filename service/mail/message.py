"""Assemble an email as MIME bytes, ready for SMTP.

We write the bytes ourselves instead of going through ``email.message``:
it is several times faster, and it keeps headers such as List-Unsubscribe
exactly as given (the stdlib would RFC 2047-encode or fold a long URL).
Every message is multipart/alternative, text first then HTML, UTF-8,
quoted-printable, with CRLF line endings.
"""

from __future__ import annotations

import binascii
import re
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from email.header import Header
from email.utils import format_datetime, formataddr, parseaddr
from functools import lru_cache

CRLF = b"\r\n"
# A quoted-printable line break that decodes to nothing (RFC 2045, 6.7 rule 5).
SOFT_BREAK = b"=\r\n"
# Longest line quoted-printable allows, without its CRLF.
MAX_QP_LINE = 76
# A header line may not exceed 998 bytes (RFC 5322); longer subjects are folded.
MAX_PLAIN_HEADER = 900


@dataclass(frozen=True)
class EncodedBody:
    """A body already quoted-printable, with CRLF line breaks, as :func:`build_mime` writes it.

    Made only of :func:`quoted_printable` or :func:`qp_piece` output, so that no
    line starts with a dot (see :func:`build_mime`).
    """

    qp: bytes

    @classmethod
    def joined(cls, pieces: Iterable[bytes]) -> EncodedBody:
        """Pieces from :func:`qp_piece`, as one body that decodes to their texts joined."""
        qp = b"".join(pieces)
        return cls(qp[:-len(SOFT_BREAK)] if qp.endswith(SOFT_BREAK) else qp)

    def decoded(self) -> str:
        return binascii.a2b_qp(self.qp.replace(CRLF, b"\n")).decode("utf-8")


Body = str | EncodedBody


@dataclass(frozen=True)
class OutgoingMessage:
    """What to send: envelope, headers and the two bodies."""

    mail_from: str
    to: str
    subject: str
    text: Body
    html: Body
    message_id: str
    date: datetime
    extra_headers: Sequence[tuple[str, str]] = field(default_factory=tuple)

    @property
    def envelope_from(self) -> str:
        return mailbox_parts(self.mail_from)[1]


def make_message_id(domain: str, key: str | None = None) -> str:
    """An angle-bracketed Message-ID on our domain; stable when ``key`` is given."""
    local = key or secrets.token_hex(16)
    return f"<{local}@{domain}>"


def build_mime(message: OutgoingMessage) -> bytes:
    """Return the complete message as bytes with CRLF line endings.

    No line of it starts with a dot (headers start with a name or folding white
    space, boundaries with "--", bodies are quoted_printable's), so it can go
    to SMTP as an Envelope with ``transparent`` set.
    """
    boundary = "=_" + secrets.token_hex(12)
    # The subject's whitespace, line breaks included, is folded to single spaces below.
    for name, value in (("From", message.mail_from), ("To", message.to), *message.extra_headers):
        if "\r" in value or "\n" in value:
            raise ValueError(f"header {name} contains a line break")
    headers: list[tuple[str, str]] = [
        ("From", _address_header(message.mail_from)),
        ("To", _address_header(message.to)),
        ("Subject", _text_header(message.subject)),
        ("Date", _date_header(message.date)),
        ("Message-ID", message.message_id),
        ("MIME-Version", "1.0"),
        *message.extra_headers,
        ("Content-Type", f'multipart/alternative; boundary="{boundary}"'),
    ]
    out = [f"{name}: {value}".encode("ascii") for name, value in headers]
    out.append(b"")
    for subtype, body in (("plain", message.text), ("html", message.html)):
        out.append(f"--{boundary}".encode("ascii"))
        out.append(f'Content-Type: text/{subtype}; charset="utf-8"'.encode("ascii"))
        out.append(b"Content-Transfer-Encoding: quoted-printable")
        out.append(b"")
        out.append(body.qp if isinstance(body, EncodedBody) else quoted_printable(body))
    out.append(f"--{boundary}--".encode("ascii"))
    out.append(b"")
    return CRLF.join(out)


def quoted_printable(text: str) -> bytes:
    """Encode a body as quoted-printable with CRLF line breaks, no line starting with a dot."""
    return _quoted_printable_lf(text).replace(b"\n", CRLF)


def _quoted_printable_lf(text: str) -> bytes:
    normalised = text.replace("\r\n", "\n").replace("\r", "\n").encode("utf-8")
    return _without_leading_dots(binascii.b2a_qp(normalised, quotetabs=False, istext=True, header=False))


def _without_leading_dots(encoded: bytes) -> bytes:
    """Quoted-printable (LF line breaks) whose lines never start with '.'.

    SMTP doubles such a dot (RFC 5321, 4.5.2), which means scanning every 30 KB
    message as it goes out. Written as =2E instead, as quoted-printable allows
    for any character, no line of ours starts with one, and the transport can
    skip the scan (Envelope.transparent). A line the escape makes too long is
    broken with a soft line break, never inside an =XX escape.
    """
    if not encoded.startswith(b".") and b"\n." not in encoded:
        return encoded
    lines: list[bytes] = []
    for line in encoded.split(b"\n"):
        while line.startswith(b"."):
            line = b"=2E" + line[1:]
            if len(line) <= MAX_QP_LINE:
                break
            cut = _outside_escapes(line, MAX_QP_LINE - 1)
            lines.append(line[:cut] + b"=")
            line = line[cut:]
        lines.append(line)
    return b"\n".join(lines)


def _outside_escapes(encoded: bytes, cut: int) -> int:
    """``cut``, or the nearest place before it that does not split an =XX escape."""
    while b"=" in encoded[cut - 2:cut]:
        cut -= 1
    return cut


def qp_piece(text: str) -> bytes:
    """``text`` as quoted-printable that can be joined to other pieces like it.

    Each piece ends at a line break, a soft one where ``text`` has none, so the
    joined pieces decode to the joined texts (their line breaks normalised
    piece by piece: a CR ending one piece and an LF starting the next are two
    breaks) and no line grows past 76 characters. A digest's static parts are
    encoded once this way, and only each reader's fields per message. As with
    :func:`quoted_printable`, no line starts with a dot.
    """
    encoded = _quoted_printable_lf(text)
    if not encoded or encoded.endswith(b"\n"):
        return encoded.replace(b"\n", CRLF)
    last_line = encoded.rfind(b"\n") + 1
    if len(encoded) - last_line >= MAX_QP_LINE:
        # No room for the "=": break the line earlier; the few characters moved to a
        # line of their own may start with a dot.
        cut = _outside_escapes(encoded, last_line + MAX_QP_LINE - 3)
        encoded = encoded[:cut] + b"=\n" + _without_leading_dots(encoded[cut:])
    return (encoded + b"=\n").replace(b"\n", CRLF)


def _date_header(date: datetime) -> str:
    # A fan-out writes the same second thousands of times; the header shows no fractions.
    # The offset is part of the key: equal instants in two zones are written differently.
    return _formatted_second(date.replace(microsecond=0), date.utcoffset())


@lru_cache(maxsize=8)
def _formatted_second(date: datetime, utcoffset: timedelta | None) -> str:
    return format_datetime(date)


def _text_header(value: str) -> str:
    """Plain ASCII as it is; anything else, or anything too long for one line,
    as RFC 2047 encoded words folded onto lines of at most 76 characters."""
    value = " ".join(value.split())
    if value.isascii() and len(value) <= MAX_PLAIN_HEADER:
        return value
    return Header(value, "utf-8").encode(linesep="\r\n")


# A plain addr-spec, as our subscribers' addresses are: nothing to parse.
_BARE_ADDRESS = re.compile(r"[^\s<>\"(),;:\\\[\]@]+@[^\s<>\"(),;:\\\[\]@]+")


def mailbox_parts(value: str) -> tuple[str, str]:
    """(display name, address) of a mailbox, as email.utils.parseaddr gives them.

    The stdlib's parser costs more than the rest of a message's headers; a bare
    address skips it, and the few sender mailboxes are parsed once.
    """
    if _BARE_ADDRESS.fullmatch(value):
        return "", value
    return _parse_mailbox(value)


@lru_cache(maxsize=64)
def _parse_mailbox(value: str) -> tuple[str, str]:
    return parseaddr(value)


@lru_cache(maxsize=64)
def _sender_header(value: str) -> str:
    name, address = mailbox_parts(value)
    if not address:
        raise ValueError(f"not an address: {value!r}")
    return formataddr((name, address), charset="utf-8") if name else address


def _address_header(value: str) -> str:
    if _BARE_ADDRESS.fullmatch(value):
        return value
    return _sender_header(value)
