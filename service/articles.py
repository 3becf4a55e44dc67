"""Articles in: validate, normalise tags and URLs, and upsert.

The same article ingested twice (same external id, or same canonical URL)
updates the stored row; it is never duplicated.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service.errors import InvalidInput
from service.models import Article, Tag

ARTICLE_FIELDS = frozenset(
    {"title", "url", "summary", "author", "image_url", "tags", "published_at", "external_id"}
)
MAX_TITLE = 500
MAX_URL = 2048
MAX_SUMMARY = 20_000
MAX_AUTHOR = 200
MAX_EXTERNAL_ID = 500
MAX_TAGS = 50
MAX_TAG_LENGTH = 200
_TRACKING_PARAMS = re.compile(r"^(utm_[a-z]+|fbclid|gclid|mc_cid|mc_eid)$", re.IGNORECASE)
# A DNS name (or IPv4 address) as browsers resolve it: labels of letters, digits, '-' and '_'.
_HOST_NAME = re.compile(r"[a-z0-9_-]{1,63}(\.[a-z0-9_-]{1,63})*\.?")


class InvalidArticle(InvalidInput):
    """One or more fields were refused; ``errors`` maps field names to messages."""


@dataclass(frozen=True)
class ArticleInput:
    title: str
    url: str
    published_at: datetime
    summary: str = ""
    author: str | None = None
    image_url: str | None = None
    tags: Sequence[str] = field(default_factory=tuple)
    external_id: str | None = None


@dataclass(frozen=True)
class IngestResult:
    article_id: int
    created: bool
    changed: bool  # created, or any field or tag differs from what was stored


def normalise_tag(raw: str) -> str:
    """One spelling per tag: Unicode-normalised, case-folded, single spaces.

    "Robert Downey Jr", " robert  downey JR " and "ROBERT DOWNEY JR" are one tag.
    """
    return " ".join(unicodedata.normalize("NFKC", raw).casefold().split())


def normalise_tags(raw: Iterable[str]) -> list[str]:
    """Normalised, de-duplicated, in first-seen order; empty tags dropped."""
    return list(dict.fromkeys(tag for tag in (normalise_tag(r) for r in raw) if tag))


def canonical_url(raw: str) -> str:
    """The form of a URL we compare on: lower-case scheme and host, no fragment,
    no tracking parameters. Raises ValueError for anything but http(s)."""
    parts = urlsplit(raw.strip())
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an absolute http(s) URL")
    query = urlencode([(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True)
                       if not _TRACKING_PARAMS.match(k)])
    host = parts.hostname.lower()
    bracketed = parts.netloc.rpartition("@")[2].startswith("[")
    if not bracketed and not _is_host_name(host):
        # urlsplit takes any text for a host ("ex ample.com", "%ff"); no reader could follow the link.
        raise ValueError("must be an absolute http(s) URL with a valid host name")
    host = f"[{host}]" if bracketed else host  # IP literals keep their brackets
    netloc = host + (f":{parts.port}" if parts.port else "")
    # Percent-encode what may not stand in a URL (spaces, quotes, angle brackets),
    # keeping escapes that are already there.
    path = quote(parts.path or "/", safe="/%:@!$&'()*+,;=-._~")
    canonical = urlunsplit((parts.scheme.lower(), netloc, path, query, ""))
    try:
        # urlsplit checks only the first bracketed part of a netloc ("http://[::1]@[a:b]/"), and
        # lets an IPvFuture literal hold anything ("[v1.[]"): the canonical form may not parse.
        urlsplit(canonical).port  # noqa: B018 (parsing is the check)
    except ValueError:
        raise ValueError("must be an absolute http(s) URL") from None
    return canonical


def _is_host_name(host: str) -> bool:
    try:  # an international name is checked in the ASCII spelling DNS uses, and kept as given
        ascii_host = host if host.isascii() else host.encode("idna").decode("ascii")
    except UnicodeError:
        return False
    return len(ascii_host) <= 253 and _HOST_NAME.fullmatch(ascii_host) is not None


def article_from_mapping(data: Mapping[str, Any]) -> ArticleInput:
    """Validate one article given as a JSON object; raise InvalidArticle naming fields."""
    errors: dict[str, str] = {}
    if not isinstance(data, Mapping):
        raise InvalidArticle({"article": "must be a JSON object"})
    for unknown in sorted(set(data) - ARTICLE_FIELDS):
        errors[str(unknown)[:100]] = "unknown field"

    title = _text(data, "title", MAX_TITLE, errors, required=True)
    url = _url(data, "url", errors, required=True)
    image_url = _url(data, "image_url", errors, required=False)
    summary = _text(data, "summary", MAX_SUMMARY, errors) or ""
    author = _text(data, "author", MAX_AUTHOR, errors)
    external_id = _text(data, "external_id", MAX_EXTERNAL_ID, errors)
    published_at = _datetime(data, "published_at", errors)
    tags = _tags(data.get("tags", []), errors)
    if errors:
        raise InvalidArticle(errors)
    assert title and url and published_at
    return ArticleInput(title=title, url=url, published_at=published_at, summary=summary,
                        author=author, image_url=image_url, tags=tags, external_id=external_id)


def ingest_articles(session: Session, items: Sequence[ArticleInput], feed_id: int | None = None
                    ) -> list[IngestResult]:
    """Insert or update each article; returns one result per item, in order.

    Tags are normalised here too, so every caller gets one spelling per tag.
    """
    items = [_normalised(item) for item in items]
    item_tags = [normalise_tags(item.tags) for item in items]
    tag_rows = tags_by_name(session, {t for tags in item_tags for t in tags})
    results = []
    for item, tags in zip(items, item_tags, strict=True):
        article = find_existing_article(session, item)
        if article is not None and article.url != item.url:
            _refuse_url_of_another_article(session, article, item.url)
        before = _fingerprint(article) if article is not None else None
        created = article is None
        if article is None:
            article = Article(url=item.url, title=item.title, published_at=item.published_at)
            session.add(article)
        article.external_id = item.external_id or article.external_id
        article.url = item.url
        article.title = item.title
        article.summary = item.summary
        article.author = item.author
        article.image_url = item.image_url
        article.published_at = item.published_at
        article.feed_id = feed_id if feed_id is not None else article.feed_id
        article.tags = [tag_rows[name] for name in tags]
        session.flush()
        results.append(IngestResult(article.id, created, _fingerprint(article) != before))
    return results


def _refuse_url_of_another_article(session: Session, article: Article, url: str) -> None:
    """An article found by external id may move to a new URL, but not onto another article's."""
    holder = session.scalars(select(Article.id).where(Article.url == url)).first()
    if holder is not None and holder != article.id:
        raise InvalidArticle({"url": "another article (with another external_id) already has this URL"})


def _fingerprint(article: Article) -> tuple[object, ...]:
    return (article.title, article.url, article.summary, article.author, article.image_url,
            article.published_at, article.external_id, article.feed_id,
            tuple(sorted(tag.name for tag in article.tags)))


def _normalised(item: ArticleInput) -> ArticleInput:
    try:
        url = canonical_url(item.url)
        image_url = canonical_url(item.image_url) if item.image_url else None
    except ValueError as error:
        raise InvalidArticle({"url": str(error)}) from None
    return replace(item, url=url, image_url=image_url)


def tags_by_name(session: Session, names: Iterable[str]) -> dict[str, Tag]:
    """Get or create a Tag per (already normalised) name."""
    wanted = set(names)
    if not wanted:
        return {}
    found = {t.name: t for t in session.scalars(select(Tag).where(Tag.name.in_(wanted)))}
    for name in sorted(wanted - found.keys()):
        tag = Tag(name=name)
        try:
            with session.begin_nested():  # a concurrent ingest may create it first
                session.add(tag)
        except IntegrityError:
            tag = session.scalars(select(Tag).where(Tag.name == name)).one()
        found[name] = tag
    return found


def find_existing_article(session: Session, item: ArticleInput) -> Article | None:
    """The stored article this item updates: same external id, else same canonical URL."""
    if item.external_id:
        by_id = session.scalars(select(Article).where(Article.external_id == item.external_id)).first()
        if by_id is not None:
            return by_id
    return session.scalars(select(Article).where(Article.url == item.url)).first()


def _text(data: Mapping[str, Any], name: str, limit: int, errors: dict[str, str],
          required: bool = False) -> str | None:
    value = data.get(name)
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            errors[name] = "is required"
        return None
    if not isinstance(value, str):
        errors[name] = "must be a string"
        return None
    value = value.strip()
    if len(value) > limit:
        errors[name] = f"must be at most {limit} characters"
        return None
    return value


def _url(data: Mapping[str, Any], name: str, errors: dict[str, str], required: bool) -> str | None:
    value = _text(data, name, MAX_URL, errors, required=required)
    if value is None:
        return None
    try:
        url = canonical_url(value)
    except ValueError as error:
        errors[name] = str(error)
        return None
    if len(url) > MAX_URL:  # percent-encoding can make a URL several times longer
        errors[name] = f"must be at most {MAX_URL} characters once percent-encoded"
        return None
    return url


def _datetime(data: Mapping[str, Any], name: str, errors: dict[str, str]) -> datetime | None:
    value = data.get(name)
    if value is None:
        errors[name] = "is required"
        return None
    if not isinstance(value, str):
        errors[name] = "must be an ISO 8601 date-time string"
        return None
    try:
        parsed = datetime.fromisoformat(value.strip())
        # A time without an offset is taken as UTC, as feeds and most CMSs mean it.
        return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
    except (ValueError, OverflowError):  # OverflowError: year 1 or 9999 shifted out of range
        errors[name] = "must be an ISO 8601 date-time, like 2026-11-25T09:30:00Z"
        return None


def _tags(value: Any, errors: dict[str, str]) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        errors["tags"] = "must be a list of strings"
        return []
    tags = normalise_tags(value)
    if len(tags) > MAX_TAGS:
        errors["tags"] = f"at most {MAX_TAGS} tags"
    elif any(len(t) > MAX_TAG_LENGTH for t in tags):
        errors["tags"] = f"each tag at most {MAX_TAG_LENGTH} characters"
    return tags
