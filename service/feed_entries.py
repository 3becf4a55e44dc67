"""Reading a fetched feed: parse with feedparser, turn entries into ArticleInputs."""

from __future__ import annotations

import hashlib
import io
import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from html.parser import HTMLParser
from typing import Any
from urllib.parse import urljoin, urlsplit

import feedparser

from service.articles import (
    MAX_AUTHOR,
    MAX_EXTERNAL_ID,
    MAX_TAG_LENGTH,
    MAX_TAGS,
    MAX_TITLE,
    MAX_URL,
    ArticleInput,
    canonical_url,
    normalise_tags,
)
from service.feed_http import FetchedFeed, one_line

log = logging.getLogger(__name__)

MAX_SUMMARY_CHARS = 2000
# feedparser flags these as "bozo" although the document was read correctly.
HARMLESS_BOZO = (feedparser.CharacterEncodingOverride, feedparser.NonXMLContentType)
_BLOCK_TAGS = frozenset({
    "address", "article", "aside", "blockquote", "br", "dd", "div", "dl", "dt", "figcaption", "figure",
    "footer", "h1", "h2", "h3", "h4", "h5", "h6", "header", "hr", "li", "ol", "p", "pre", "section",
    "table", "td", "th", "tr", "ul",
})
_INVISIBLE_TAGS = frozenset({"script", "style", "template", "noscript"})


class FeedParseError(Exception):
    """The body is not an RSS or Atom document we can read; the message is one line."""


class InvalidEntry(ValueError):
    """A feed entry cannot become an article (no title, no usable link ...)."""





def parse_feed(fetched: FetchedFeed) -> Any:
    """Parse a fetched body with feedparser; raises FeedParseError when it is no feed at all."""
    headers = {"content-location": fetched.url}
    if fetched.content_type:
        headers["content-type"] = fetched.content_type
    # Always a file object: given bytes or str, feedparser may take them for a
    # file name or URL and open it itself.
    parsed = feedparser.parse(io.BytesIO(fetched.body), response_headers=headers)
    bozo = parsed.get("bozo_exception")
    if not parsed.get("version"):
        reason = f": {bozo}" if bozo is not None else ""
        raise FeedParseError(one_line(f"not an RSS or Atom document{reason}"))
    if bozo is not None and not isinstance(bozo, HARMLESS_BOZO) and not parsed.entries:
        raise FeedParseError(one_line(f"malformed feed: {bozo}"))
    return parsed


def article_from_entry(entry: Any, *, feed_id: int, extra_tags: Sequence[str] = (),
                       fetched_at: datetime) -> ArticleInput:
    """Turn one feedparser entry into an ArticleInput; raises InvalidEntry when it cannot be one."""
    title = _shorten(_text_of(entry.get("title"), entry.get("title_detail")), MAX_TITLE)
    if not title:
        raise InvalidEntry("no title")
    link = entry.get("link")
    if not link:
        raise InvalidEntry(f"{title!r}: no link")
    try:
        url = canonical_url(link)
    except ValueError as error:
        raise InvalidEntry(f"{title!r}: link {link[:200]!r} {error}") from None
    if len(url) > MAX_URL:
        raise InvalidEntry(f"{title!r}: link longer than {MAX_URL} characters")
    return ArticleInput(
        title=title,
        url=url,
        published_at=entry_time(entry) or fetched_at,
        summary=_summary(entry),
        author=_shorten(_author(entry), MAX_AUTHOR) or None,
        image_url=_image_url(entry, base=url),
        tags=_tags(entry, extra_tags),
        external_id=_external_id(entry, feed_id),
    )


def entry_time(entry: Any) -> datetime | None:
    for key in ("published_parsed", "updated_parsed"):
        parsed = entry.get(key)
        if parsed:
            try:
                # feedparser gives struct_time already converted to UTC.
                return datetime(*parsed[:6], tzinfo=UTC)
            except (TypeError, ValueError):
                continue
    return None


def _summary(entry: Any) -> str:
    detail = entry.get("summary_detail")
    value = entry.get("summary")
    if not value and entry.get("content"):
        detail = entry["content"][0]
        value = detail.get("value")
    return _shorten(_text_of(value, detail), MAX_SUMMARY_CHARS)


def _author(entry: Any) -> str:
    detail = entry.get("author_detail") or {}
    return " ".join(str(detail.get("name") or entry.get("author") or "").split())


def _image_url(entry: Any, base: str) -> str | None:
    candidates = [m.get("url") for m in entry.get("media_content", [])
                  if m.get("medium") == "image" or str(m.get("type", "")).startswith("image/")]
    candidates += [m.get("url") for m in entry.get("media_thumbnail", [])]
    candidates += [e.get("href") for e in entry.get("enclosures", [])
                   if str(e.get("type", "")).startswith("image/")]
    for candidate in candidates:
        if not candidate:
            continue
        # Not canonicalised: image URLs often carry signed query strings that must stay byte-exact.
        absolute = urljoin(base, candidate.strip())
        if urlsplit(absolute).scheme in ("http", "https") and len(absolute) <= MAX_URL:
            return absolute
    return None


def _tags(entry: Any, extra_tags: Sequence[str]) -> list[str]:
    categories = [str(t.get("term") or t.get("label") or "") for t in entry.get("tags", [])]
    # The topic's feed tag goes first so the MAX_TAGS cut never drops it.
    tags = [t for t in normalise_tags([*extra_tags, *categories]) if len(t) <= MAX_TAG_LENGTH]
    return tags[:MAX_TAGS]


def _external_id(entry: Any, feed_id: int) -> str | None:
    guid = str(entry.get("id") or "").strip()
    if not guid:
        return None
    # Namespaced by feed: RSS guids are often only unique within their feed ("123"),
    # and a bare guid would let one feed overwrite another feed's articles.
    external_id = f"feed:{feed_id}:{guid}"
    if len(external_id) > MAX_EXTERNAL_ID:
        external_id = f"feed:{feed_id}:sha256:{hashlib.sha256(guid.encode()).hexdigest()}"
    return external_id


class _TextExtractor(HTMLParser):
    """The visible text of an HTML fragment, with entities unescaped."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._hidden = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _INVISIBLE_TAGS:
            self._hidden += 1
        elif tag in _BLOCK_TAGS:
            self.parts.append(" ")  # so "<p>a</p><p>b</p>" reads "a b", not "ab"

    def handle_endtag(self, tag: str) -> None:
        if tag in _INVISIBLE_TAGS:
            self._hidden = max(0, self._hidden - 1)
        elif tag in _BLOCK_TAGS:
            self.parts.append(" ")

    def handle_data(self, data: str) -> None:
        if not self._hidden:
            self.parts.append(data)


def html_to_text(html: str) -> str:
    """Plain text of an HTML fragment: tags stripped, entities unescaped, whitespace collapsed."""
    extractor = _TextExtractor()
    extractor.feed(html)
    extractor.close()
    return " ".join("".join(extractor.parts).split())


def _text_of(value: Any, detail: Any) -> str:
    if not value:
        return ""
    content_type = str((detail or {}).get("type") or "text/html")
    if "html" in content_type:
        return html_to_text(str(value))
    return " ".join(str(value).split())


def _shorten(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    cut = text[: limit - 1]
    # End on a word boundary when there is one reasonably close.
    if " " in cut[-100:]:
        cut = cut.rsplit(" ", 1)[0]
    return cut.rstrip() + "…"


def fit_or_none(value: str | None, limit: int) -> str | None:
    # A cut validator would never match again; storing none just costs a full fetch.
    return value if value is not None and len(value) <= limit else None
