"""Properties of the pure functions, checked with generated input (hypothesis).

Each test states a rule that must hold for every input, not just the examples
in the neighbouring unit tests: tokens, address and tag normalisation, URLs,
VERP addresses and the MIME bytes we send.
"""

from __future__ import annotations

import binascii
import string
import sys
from datetime import UTC, datetime
from email import message_from_bytes, policy
from urllib.parse import parse_qsl, urlsplit

import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from service.articles import _TRACKING_PARAMS, canonical_url, normalise_tag, normalise_tags
from service.mail.message import (
    MAX_QP_LINE,
    EncodedBody,
    OutgoingMessage,
    build_mime,
    make_message_id,
    qp_piece,
    quoted_printable,
)
from service.models import LARGEST_ID
from service.subscriptions import InvalidSubscription, normalise_email
from service.tokens import InvalidToken, TokenPurpose, TokenSigner
from service.verp import delivery_id_from_verp, verp_address

KEY = "current-key-for-property-tests-0123456789"
WHITESPACE = [chr(c) for c in range(sys.maxunicode + 1) if chr(c).isspace()]

keys = st.text(min_size=1, max_size=40)
purposes = st.sampled_from(list(TokenPurpose))
claims = st.dictionaries(
    st.text(max_size=10), st.one_of(st.integers(), st.text(max_size=20)), max_size=5
)
# Tokens are URL-safe base64 and dots: changes within that alphabet are the subtle ones.
token_characters = st.one_of(st.sampled_from(string.ascii_letters + string.digits + "-_.="),
                            st.characters(codec="utf-8"))
whitespace = st.text(alphabet=st.sampled_from(WHITESPACE), max_size=4)
no_whitespace = st.characters(codec="utf-8", exclude_characters=WHITESPACE)


def _same_under_case(text: str) -> bool:
    """Whether upper- and lower-casing lose nothing (they do for the dotless i, or for sharp s -> SS)."""
    return text.upper().lower() == text.lower() and text.lower().upper() == text.upper()


# ------------------------------------------------------------------ tokens


@given(purposes, claims)
def test_a_signed_token_reads_back_its_claims(purpose, data):
    signer = TokenSigner(KEY)
    assert signer.read(purpose, signer.sign(purpose, data)) == data


@settings(max_examples=2000)  # cheap, and an accepted change is rare
@given(purposes, claims, st.data())
def test_a_token_with_one_character_changed_is_refused(purpose, data, draw):
    # Nothing drawn may depend on the token, which carries the time it was signed: hypothesis
    # replays an example and must draw the same things again a second later.
    # The first and last characters are drawn more often: boundaries are where codecs slip.
    position = draw.draw(st.integers(0, 10_000) | st.sampled_from([0, -1]), label="position")
    replacement = draw.draw(token_characters, label="replacement")
    signer = TokenSigner(KEY)
    token = signer.sign(purpose, data)
    position = len(token) - 1 if position == -1 else position % len(token)
    if replacement == token[position]:
        replacement = "A" if token[position] != "A" else "B"
    mangled = token[:position] + replacement + token[position + 1:]
    with pytest.raises(InvalidToken):
        signer.read(purpose, mangled)


@given(purposes, claims, st.data())
def test_a_truncated_token_is_refused(purpose, data, draw):
    signer = TokenSigner(KEY)
    token = signer.sign(purpose, data)
    start = draw.draw(st.integers(0, len(token)), label="start")
    end = draw.draw(st.integers(start, len(token)), label="end")
    assume((start, end) != (0, len(token)))
    with pytest.raises(InvalidToken):
        signer.read(purpose, token[start:end])


@settings(max_examples=500)
@given(purposes, claims, st.text(token_characters, min_size=1, max_size=8), st.data())
def test_a_token_with_text_inserted_anywhere_is_refused(purpose, data, extra, draw):
    signer = TokenSigner(KEY)
    token = signer.sign(purpose, data)
    position = draw.draw(st.integers(0, len(token)), label="position")
    with pytest.raises(InvalidToken):
        signer.read(purpose, token[:position] + extra + token[position:])


@given(purposes, st.text(max_size=200))
def test_any_string_reads_as_claims_or_is_refused_as_invalid(purpose, text):
    try:
        result = TokenSigner(KEY).read(purpose, text)
    except InvalidToken:
        return
    assert isinstance(result, dict)


@given(purposes, purposes, claims)
def test_a_token_for_one_purpose_never_reads_under_another(signed_for, read_as, data):
    assume(signed_for != read_as)
    signer = TokenSigner(KEY)
    with pytest.raises(InvalidToken):
        signer.read(read_as, signer.sign(signed_for, data))


@given(purposes, claims, keys, keys, keys)
def test_fallback_keys_verify_and_unrelated_keys_do_not(purpose, data, current, old, unrelated):
    assume(len({current, old, unrelated}) == 3)
    rotated = TokenSigner(current, fallback_keys=(old,))
    assert rotated.read(purpose, TokenSigner(old).sign(purpose, data)) == data
    # After rotation the current key signs, so the new token needs no fallback.
    assert TokenSigner(current).read(purpose, rotated.sign(purpose, data)) == data
    with pytest.raises(InvalidToken):
        rotated.read(purpose, TokenSigner(unrelated).sign(purpose, data))


# ------------------------------------------------------------------ email addresses

addresses = st.one_of(st.emails(), st.text(max_size=80))


def _normalised_or_none(raw: str) -> str | None:
    """The normalised address, or None when refused (and refused the one documented way)."""
    try:
        return normalise_email(raw)
    except InvalidSubscription as invalid:
        assert "email" in invalid.errors
        return None


@settings(deadline=None)
@given(addresses)
def test_an_address_is_normalised_to_one_address_or_refused_as_an_email_error(raw):
    normalised = _normalised_or_none(raw)
    if normalised is not None:
        assert not any(ch.isspace() for ch in normalised)
        assert normalised.count("@") == 1


@settings(deadline=None)
@given(addresses)
def test_normalising_an_address_twice_changes_nothing(raw):
    normalised = _normalised_or_none(raw)
    if normalised is not None:
        assert normalise_email(normalised) == normalised


@settings(deadline=None)
@given(addresses, whitespace, whitespace)
def test_case_and_surrounding_whitespace_never_change_the_address(raw, before, after):
    assume(_same_under_case(raw))
    normalised = _normalised_or_none(raw)
    for variant in (raw.upper(), raw.lower(), raw.swapcase(), before + raw + after):
        assert _normalised_or_none(variant) == normalised, variant


# ------------------------------------------------------------------ tags


@given(st.text())
def test_normalising_a_tag_twice_changes_nothing(raw):
    tag = normalise_tag(raw)
    assert normalise_tag(tag) == tag
    assert tag == " ".join(tag.split())


@given(st.text())
def test_the_case_of_a_tag_does_not_matter(raw):
    assume(_same_under_case(raw))
    assert normalise_tag(raw.upper()) == normalise_tag(raw.lower()) == normalise_tag(raw)


@given(st.lists(st.text(alphabet=no_whitespace, min_size=1), max_size=5),
       st.lists(st.text(alphabet=st.sampled_from(WHITESPACE), min_size=1, max_size=3), min_size=6,
                max_size=6))
def test_whitespace_in_a_tag_collapses_to_single_spaces(words, gaps):
    spaced = gaps[0] + "".join(word + gap for word, gap in zip(words, gaps[1:], strict=False))
    assert normalise_tag(spaced) == normalise_tag(" ".join(words))


@given(st.lists(st.text(max_size=12), max_size=12))
def test_a_tag_list_holds_each_normalised_tag_once(raw):
    tags = normalise_tags(raw)
    assert len(tags) == len(set(tags))
    assert set(tags) == {normalise_tag(r) for r in raw} - {""}
    assert all(normalise_tag(tag) == tag for tag in tags)


# ------------------------------------------------------------------ URLs

hosts = st.one_of(
    st.from_regex(r"[A-Za-z0-9-]{1,12}(\.[A-Za-z0-9-]{1,12}){0,3}", fullmatch=True),
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(lambda ip: f"[{ip}]"),
    st.text(max_size=12),
)
url_like = st.one_of(
    st.text(max_size=60),
    st.builds(
        "{}://{}{}{}{}{}{}".format,
        st.sampled_from(["http", "https", "HTTP", "Https", "ftp", "javascript", ""]),
        st.sampled_from(["", "user@", "user:pw@"]),
        hosts,
        st.one_of(st.just(""), st.integers(0, 70000).map(lambda p: f":{p}"),
                  st.text(max_size=4).map(":".__add__)),
        st.one_of(st.just(""), st.text(max_size=20).map("/".__add__)),
        st.one_of(st.just(""), st.lists(st.tuples(
            st.sampled_from(["utm_source", "UTM_Medium", "fbclid", "id", "q", ""]) | st.text(max_size=5),
            st.text(max_size=5)), max_size=4).map(lambda kv: "?" + "&".join(f"{k}={v}" for k, v in kv))),
        st.one_of(st.just(""), st.text(max_size=8).map("#".__add__)),
    ),
)


@settings(max_examples=500)
@given(url_like)
@example("http://[v1.[]/")  # found by CI: a bracket inside an IPvFuture host came back unbalanced
@example("http://[::1]@[a:b]/")  # urlsplit checks only the first bracketed part of the netloc
@example("http://[v1.x]/")
def test_a_canonical_url_is_its_own_canonical_form(raw):
    try:
        canonical = canonical_url(raw)
    except ValueError:
        return
    assert canonical_url(canonical) == canonical
    parts = urlsplit(canonical)
    assert parts.scheme in ("http", "https")
    assert "#" not in canonical
    assert not any(_TRACKING_PARAMS.match(name) for name, _ in parse_qsl(parts.query))


# ------------------------------------------------------------------ VERP

bounce_addresses = st.builds(
    "{}@{}".format,
    st.from_regex(r"[a-z0-9._-]{1,20}", fullmatch=True),
    st.from_regex(r"[a-z0-9-]{1,15}(\.[a-z0-9-]{1,15}){1,3}", fullmatch=True),
)
delivery_ids = st.integers(min_value=0, max_value=LARGEST_ID)  # every id a delivery row can have
# (past it, a VERP address names nothing: tests/unit/test_verp.py)


@given(bounce_addresses, delivery_ids, keys)
def test_a_verp_address_names_its_delivery(bounce, delivery_id, key):
    address = verp_address(bounce, delivery_id, key)
    assert delivery_id_from_verp(address, bounce, [key]) == delivery_id
    # Mail servers may hand the address back in angle brackets and any case.
    assert delivery_id_from_verp(f"<{address.upper()}>", bounce, [key]) == delivery_id


@given(bounce_addresses, delivery_ids, keys, keys)
def test_a_verp_address_under_another_key_names_nothing(bounce, delivery_id, key, other):
    assume(key != other)
    address = verp_address(bounce, delivery_id, key)
    assert delivery_id_from_verp(address, bounce, [other]) is None
    assert delivery_id_from_verp(address, bounce, [other, key]) == delivery_id


# ------------------------------------------------------------------ MIME


def _message(text: str = "", html: str = "", subject: str = "Your digest") -> OutgoingMessage:
    return OutgoingMessage(
        mail_from="Marvel News <news@example.com>",
        to="reader@example.com",
        subject=subject,
        text=text,
        html=html,
        message_id=make_message_id("example.com"),
        date=datetime(2026, 11, 25, 12, 0, tzinfo=UTC),
    )


def _lf(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _assert_lines_are_crlf_and_short(raw: bytes) -> None:
    assert raw.endswith(b"\r\n")
    lines = raw.split(b"\r\n")
    assert not any(b"\r" in line or b"\n" in line for line in lines), "a bare CR or LF"
    assert max(len(line) for line in lines) <= 998


@settings(deadline=None)
@given(st.text(), st.text())
def test_any_bodies_make_a_parseable_message_that_decodes_to_them(text, html):
    raw = build_mime(_message(text, html))
    _assert_lines_are_crlf_and_short(raw)
    parsed = message_from_bytes(raw, policy=policy.default)
    assert not parsed.defects
    parts = list(parsed.iter_parts())
    assert [part.get_content_type() for part in parts] == ["text/plain", "text/html"]
    assert not any(part.defects for part in parts)
    # The parser keeps quoted-printable's CRLF hard breaks in the decoded text.
    assert _lf(parts[0].get_content()) == _lf(text)
    assert _lf(parts[1].get_content()) == _lf(html)


def _longest_line(encoded: bytes) -> int:
    return max(len(line) for line in encoded.split(b"\r\n"))


@settings(deadline=None)
@given(st.lists(st.text().map(lambda text: text.replace("\r", "\n")), max_size=8), st.text())
def test_a_body_joined_from_quoted_printable_pieces_decodes_to_the_joined_texts(pieces, html):
    """How a digest's pre-encoded static parts and each reader's fields become one body.
    (The digest's template normalises line breaks before it is cut into pieces.)"""
    body = EncodedBody.joined(qp_piece(piece) for piece in pieces)
    assert _lf(body.decoded()) == _lf("".join(pieces))
    raw = build_mime(_message(body, html))  # type: ignore[arg-type]
    _assert_lines_are_crlf_and_short(raw)
    parsed = message_from_bytes(raw, policy=policy.default)
    text_part, html_part = parsed.iter_parts()
    assert not text_part.defects
    assert _lf(text_part.get_content()) == _lf("".join(pieces))
    assert _lf(html_part.get_content()) == _lf(html)
    # No longer lines than quoting each piece alone writes (binascii can write 77 or 78
    # when it quotes trailing white space, as it does for whole bodies).
    own = [_longest_line(quoted_printable(piece)) for piece in pieces]
    assert _longest_line(body.qp) <= max([MAX_QP_LINE, *own])


# Subjects as the templates make them: a fixed phrase and a list of topic names
# (each up to 200 characters, up to 20 topics per subscriber).
topic_names = st.text(min_size=1, max_size=200) | st.builds(
    lambda word, times: (word * times)[:200], st.sampled_from(["News ", "Ünïcödé ", "日本のニュース"]),
    st.integers(1, 40),
)
subjects = st.lists(topic_names, min_size=1, max_size=20).map(
    lambda names: "Confirm your subscription to " + ", ".join(names)
)


@settings(deadline=None)
@given(subjects)
def test_any_subject_keeps_every_line_short(subject):
    raw = build_mime(_message("Hello", "<p>Hello</p>", subject=subject))
    _assert_lines_are_crlf_and_short(raw)


# Text rich in what makes a quoted-printable line start with a dot: dots, line breaks,
# escapes and runs long enough for a soft break to fall anywhere.
dotty_text = st.text(alphabet=st.sampled_from(".. .=\n\txé"), max_size=400) | st.text()


def _no_line_starts_with_a_dot(raw: bytes) -> bool:
    return not raw.startswith(b".") and b"\n." not in raw


@settings(deadline=None)
@given(st.lists(dotty_text, max_size=6), dotty_text)
def test_no_line_of_a_message_starts_with_a_dot_so_smtp_needs_no_stuffing(pieces, html):
    """build_mime's output goes to SMTP without dot-stuffing (Envelope.transparent)."""
    text = "".join(piece.replace("\r", "\n") for piece in pieces)
    body = EncodedBody.joined(qp_piece(piece.replace("\r", "\n")) for piece in pieces)
    for encoded in (body.qp, quoted_printable(text), quoted_printable(html)):
        assert _no_line_starts_with_a_dot(encoded)
    assert _lf(body.decoded()) == _lf(text)
    raw = build_mime(_message(body, html))  # type: ignore[arg-type]
    assert _no_line_starts_with_a_dot(raw)
    _assert_lines_are_crlf_and_short(raw)
    text_part, html_part = message_from_bytes(raw, policy=policy.default).iter_parts()
    assert _lf(text_part.get_content()) == _lf(text)
    assert _lf(html_part.get_content()) == _lf(html)
    # The =2E escape never makes a line longer than binascii's own longest.
    plain = binascii.b2a_qp(_lf(html).encode(), quotetabs=False, istext=True, header=False)
    assert _longest_line(quoted_printable(html)) <= max(MAX_QP_LINE, *map(len, plain.split(b"\n")))
