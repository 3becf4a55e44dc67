"""Render each distinct email once, then personalise a copy per reader.

In a fan-out most readers of the same topics get the same articles. Rendering
Jinja and inlining CSS for each of 100,000 of them would be most of the CPU
a send costs, so a digest is rendered once per *content* (frequency, whether
the reader gave a name, the articles under each topic) with placeholders in
the personal fields: name, address, unsubscribe and preferences links. Each
reader's copy is then the template's static pieces joined with their fields,
escaped as the HTML serializer would have escaped them. Confirmations go the
same way, their content being the pending topics and their confirmation link
one more personal field.

A template may print a personal field, escaped or not, and test whether the
name is there; anything more (a filter on the name, say) would not survive
substitution. So each content is also rendered the slow way for a probe
reader whose fields hold every character escaping treats specially, and
compared with the filled-in template: a mismatch turns the shortcut off for
that content, and its readers are rendered one by one, as before.
"""

from __future__ import annotations

import enum
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Generic, TypeVar

from service import links
from service.config import Settings
from service.mail.message import Body, EncodedBody, qp_piece
from service.mail.rendering import RenderedEmail
from service.models import Frequency

# Letters only, so neither escaping nor CSS inlining can change them.
_PLACEHOLDERS = {
    "name": "NLxPERSONALxNAMEx",
    "email": "NLxPERSONALxEMAILx",
    "unsubscribe_url": "NLxPERSONALxUNSUBSCRIBEx",
    "preferences_url": "NLxPERSONALxPREFERENCESx",
    "confirm_url": "NLxPERSONALxCONFIRMx",
}

DigestKey = tuple[Frequency, bool, tuple[tuple[int, tuple[int, ...]], ...]]
Key = TypeVar("Key", bound=Hashable)


@dataclass(frozen=True)
class Reader:
    """Who an email is for: what its personal fields are made of."""

    id: int
    email: str
    name: str | None
    frequency: Frequency
    token_epoch: int = 0  # signed into a confirmation link


def personal_fields(reader: Reader) -> dict[str, str]:
    """A digest's personal fields."""
    return {
        "name": reader.name or "",
        "email": reader.email,
        "unsubscribe_url": links.unsubscribe_url(reader.id),
        "preferences_url": links.preferences_url(reader.id),
    }


def confirmation_fields(reader: Reader) -> dict[str, str]:
    """A confirmation's personal fields: a digest's and the confirmation link."""
    return {**personal_fields(reader), "confirm_url": links.confirm_url(reader.id, reader.token_epoch)}


def content_key(reader: Reader, pairs: Iterable[tuple[int, int]]) -> DigestKey:
    """What makes two readers' digests the same but for the personal fields.

    ``pairs`` are (topic id, article id).
    """
    by_topic: dict[int, list[int]] = {}
    for topic_id, article_id in pairs:
        by_topic.setdefault(topic_id, []).append(article_id)
    sections = tuple(sorted((topic_id, tuple(sorted(ids))) for topic_id, ids in by_topic.items()))
    return reader.frequency, bool(reader.name), sections


# The HTML comes out of the CSS inliner's serializer (html5ever), which escapes
# differently in text and in attribute values; a value put in its place must be
# escaped the same way.
_TEXT_ESCAPES = str.maketrans({"&": "&amp;", "\xa0": "&nbsp;", "<": "&lt;", ">": "&gt;"})
_ATTRIBUTE_ESCAPES = str.maketrans({"&": "&amp;", "\xa0": "&nbsp;", '"': "&quot;"})
# A reader whose personal fields hold every character escaping treats specially:
# if the shortcut gets their email right, it gets anyone's right.
_PROBE_NAME = "Probe <&> \"quoted\" 'single' \xa0 Zoë"
_PROBE_EMAIL = "probe+\"<&>'@example.com"


@dataclass(frozen=True)
class PersonalCopy:
    """One reader's email; a body is quoted-printable already when it was filled in."""

    subject: str
    text: Body
    html: Body

    def decoded(self) -> RenderedEmail:
        return RenderedEmail(subject=self.subject, text=_decoded(self.text), html=_decoded(self.html))


def _decoded(body: Body) -> str:
    return body.decoded() if isinstance(body, EncodedBody) else _as_sent(body)


def _as_sent(body: str) -> str:
    """A body with the line breaks quoted-printable encoding gives it."""
    return body.replace("\r\n", "\n").replace("\r", "\n")


@dataclass(frozen=True)
class _Cut:
    """A body cut at its personal fields: its static pieces, quoted-printable once for all
    readers, and between them the slots, each with the escaping its place needs."""

    pieces: tuple[bytes, ...]  # one more than slots
    slots: tuple[tuple[str, dict[int, str] | None], ...]  # (personal field, escapes)

    @classmethod
    def of(cls, body: str, html: bool, placeholder: re.Pattern[str]) -> _Cut:
        pieces: list[bytes] = []
        slots: list[tuple[str, dict[int, str] | None]] = []
        # Line breaks normalised first, so no piece ends in a CR whose LF starts the next.
        body, start = _as_sent(body), 0
        for match in placeholder.finditer(body):
            escapes = None
            if html:
                in_tag = body.rfind("<", 0, match.start()) > body.rfind(">", 0, match.start())
                escapes = _ATTRIBUTE_ESCAPES if in_tag else _TEXT_ESCAPES
            pieces.append(qp_piece(body[start:match.start()]))
            slots.append((_FIELD_OF[match.group()], escapes))
            start = match.end()
        pieces.append(qp_piece(body[start:]))
        return cls(tuple(pieces), tuple(slots))

    def fill(self, fields: Mapping[str, str], encoded: dict[str, bytes] | None = None) -> EncodedBody:
        """This body for these fields; ``encoded`` keeps each value's quoted-printable for
        the other slots and bodies of the same message (a link appears several times)."""
        encoded = {} if encoded is None else encoded
        out = [self.pieces[0]]
        for (field, escapes), piece in zip(self.slots, self.pieces[1:], strict=True):
            value = fields[field].translate(escapes) if escapes else fields[field]
            if value not in encoded:
                encoded[value] = qp_piece(value)
            out.append(encoded[value])
            out.append(piece)
        return EncodedBody.joined(out)


_FIELD_OF = {placeholder: field for field, placeholder in _PLACEHOLDERS.items()}


@lru_cache(maxsize=8)
def _placeholder_pattern(fields: frozenset[str]) -> re.Pattern[str]:
    """The placeholders of these fields only: another kind's placeholder in an article's
    text (a confirmation's in a digest, say) is text like any other."""
    return re.compile("|".join(re.escape(_PLACEHOLDERS[field]) for field in sorted(fields)))


@dataclass(frozen=True)
class _Template:
    """A content rendered with placeholders in the personal fields."""

    subject: str
    text: _Cut
    html: _Cut
    placeholder: re.Pattern[str]

    @classmethod
    def of(cls, rendered: RenderedEmail, fields: frozenset[str]) -> _Template:
        placeholder = _placeholder_pattern(fields)
        return cls(rendered.subject, _Cut.of(rendered.text, False, placeholder),
                   _Cut.of(rendered.html, True, placeholder), placeholder)

    def fill(self, fields: Mapping[str, str]) -> PersonalCopy:
        subject = self.placeholder.sub(lambda match: fields[_FIELD_OF[match.group()]], self.subject)
        encoded: dict[str, bytes] = {}
        return PersonalCopy(" ".join(subject.split()), self.text.fill(fields, encoded),
                            self.html.fill(fields, encoded))


class _Missing(enum.Enum):
    MISSING = enum.auto()


MISSING = _Missing.MISSING


class TemplateCache:
    """Contents already cut into templates, kept across the batches of one process.

    A worker sends a fan-out in batches of DIGEST_BATCH_SIZE, and each batch
    rendered each of its contents twice (the template and its probe). The key
    under which a template is kept names everything its render read (see the
    composers' content versions in service.mail.compose), so a hit is the email
    a render would give now; ``max_age`` bounds what the key cannot see, such as
    a template that reads a relationship of an article.
    """

    def __init__(self, size: int = 64, max_age: float = 300.0) -> None:
        self._size = size
        self._max_age = max_age
        self._entries: OrderedDict[Hashable, tuple[float, _Template | None]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> _Template | _Missing | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or time.monotonic() - entry[0] > self._max_age:
                return MISSING
            self._entries.move_to_end(key)
            return entry[1]

    def put(self, key: Hashable, template: _Template | None) -> None:
        with self._lock:
            self._entries[key] = (time.monotonic(), template)
            self._entries.move_to_end(key)
            while len(self._entries) > self._size:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


class PersonalCopies(Generic[Key]):
    """Renders emails through ``render``, once per content, for the life of one batch.

    ``render(reader, key, fields)`` is the slow path: it renders the email of that
    content for a reader with those personal fields, ``fields_of(reader)``. With a
    ``shared`` cache, ``version(key)`` names what the content's render would read
    now, and a template made by an earlier batch for the same content and version
    is used. A key names the content of one kind of email only: digests and
    confirmations need caches of their own.
    """

    def __init__(self, render: Callable[[Reader, Key, Mapping[str, str]], RenderedEmail],
                 version: Callable[[Key], Hashable] | None = None,
                 shared: TemplateCache | None = None,
                 fields_of: Callable[[Reader], dict[str, str]] = personal_fields) -> None:
        self._render = render
        self._version = version
        self._shared = shared
        self._fields_of = fields_of
        self._templates: dict[Key, _Template | None] = {}
        self.renders = 0  # slow-path renders, for the benchmark and the tests

    def copy_for(self, reader: Reader, key: Key, fields: Mapping[str, str] | None = None
                 ) -> PersonalCopy:
        """The email of this content for this reader; ``fields`` are their ``fields_of``, if at hand."""
        if key not in self._templates:
            self._templates[key] = self._shared_template(reader, key)
        template = self._templates[key]
        fields = fields or self._fields_of(reader)
        if template is None:
            rendered = self._slow(reader, key, fields)
            return PersonalCopy(rendered.subject, rendered.text, rendered.html)
        return template.fill(fields)

    def _shared_template(self, reader: Reader, key: Key) -> _Template | None:
        if self._shared is None or self._version is None:
            return self._template_for(reader, key)
        shared_key = (key, self._version(key))
        template = self._shared.get(shared_key)
        if template is MISSING:
            template = self._template_for(reader, key)
            self._shared.put(shared_key, template)
        return template

    def _template_for(self, reader: Reader, key: Key) -> _Template | None:
        """The content with placeholders, if filling it in gives exactly what rendering would."""
        probe = Reader(reader.id, _PROBE_EMAIL, _PROBE_NAME if reader.name else None, reader.frequency,
                       reader.token_epoch)
        probe_fields = self._fields_of(probe)
        placeholders = {field: _PLACEHOLDERS[field] for field in probe_fields}
        if not reader.name:
            placeholders["name"] = ""  # falsy, as the reader's: the template's {% if name %} agrees
        template = _Template.of(self._slow(reader, key, placeholders), frozenset(probe_fields))
        expected = self._slow(probe, key, probe_fields)
        if template.fill(probe_fields).decoded() != RenderedEmail(
                expected.subject, _as_sent(expected.html), _as_sent(expected.text)):
            return None
        return template

    def _slow(self, reader: Reader, key: Key, fields: Mapping[str, str]) -> RenderedEmail:
        self.renders += 1
        return self._render(reader, key, fields)


def digest_context(settings: Settings, frequency: Frequency, sections: list, fields: Mapping[str, str]
                   ) -> dict:
    """The digest template's variables."""
    return {
        "name": fields["name"] or None,
        "email": fields["email"],
        "sections": sections,
        "article_count": sum(len(section.articles) for section in sections),
        "publisher_name": settings.PUBLISHER_NAME,
        "postal_address": settings.PUBLISHER_POSTAL_ADDRESS,
        "frequency": frequency.value,
        "unsubscribe_url": fields["unsubscribe_url"],
        "preferences_url": fields["preferences_url"],
    }
