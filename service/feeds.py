"""RSS and Atom feeds in: fetch over HTTP, parse with feedparser, ingest entries as articles.

A poll is one transaction per feed and never raises for a broken feed: the
failure is stored on the feed as ``last_error``, so one bad publisher cannot
stop the others (or the beat task). Entries go through
:func:`service.articles.ingest_articles`, so polling the same feed again
updates articles and never duplicates them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session

from service.articles import (
    MAX_URL,
    InvalidArticle,
    canonical_url,
    find_existing_article,
    ingest_articles,
)
from service.errors import InvalidInput, NotFound
from service.feed_entries import (
    HARMLESS_BOZO,
    FeedParseError,
    InvalidEntry,
    article_from_entry,
    entry_time,
    fit_or_none,
    one_line,
    parse_feed,
)
from service.feed_http import FeedFetchError, fetch_feed
from service.models import Feed, utcnow
from service.topics import TopicChanges, feed_tag, get_topic, update_topic

log = logging.getLogger(__name__)

MAX_ETAG = 500  # the lengths of Feed.etag and Feed.last_modified
MAX_LAST_MODIFIED = 100
FEEDS_PER_PAGE = 100


class InvalidFeed(InvalidInput):
    """A feed field was refused."""


@dataclass
class PollResult:
    """What one poll of one feed did. ``error`` is set when nothing could be ingested;
    ``warning`` when the document was malformed but read leniently."""

    feed_id: int
    url: str
    new: int = 0
    updated: int = 0
    unchanged: int = 0
    skipped: int = 0
    not_modified: bool = False
    error: str | None = None
    warning: str | None = None

    def describe(self) -> str:
        """One line for logs and the CLI."""
        if self.error:
            return f"{self.url}: error: {self.error}"
        if self.not_modified:
            return f"{self.url}: not modified"
        line = (f"{self.url}: {self.new} new, {self.updated} updated, {self.unchanged} unchanged, "
                f"{self.skipped} skipped")
        return f"{line} (warning: {self.warning})" if self.warning else line


# ---------------------------------------------------------------- registering


def add_feed(session: Session, url: str, topic_slug: str | None = None) -> Feed:
    """Register a feed, or return the one with this URL; the caller commits.

    With a topic, the feed is pointed at it (through the topic's own rules, so
    the topic gains its feed tag) and every entry will carry that tag.
    """
    try:
        url = canonical_url(url)
    except ValueError as error:
        raise InvalidFeed({"url": str(error)}) from None
    if len(url) > MAX_URL:
        raise InvalidFeed({"url": f"must be at most {MAX_URL} characters"})
    if topic_slug is not None:
        topic = get_topic(session, topic_slug, include_retired=False)
        update_topic(session, topic, TopicChanges(feed_url=url))
    elif _feed_by_url(session, url) is None:
        session.add(Feed(url=url))
        session.flush()
    feed = _feed_by_url(session, url)
    assert feed is not None
    return feed


def count_feeds(session: Session) -> int:
    return session.scalar(select(func.count()).select_from(Feed)) or 0


def _feed_by_url(session: Session, url: str) -> Feed | None:
    return session.scalars(select(Feed).where(Feed.url == url)).one_or_none()


# ---------------------------------------------------------------- polling


def poll_all_feeds(session: Session, *, timeout: float, max_bytes: int,
                   progress: Callable[[PollResult], None] | None = None) -> list[PollResult]:
    """Poll every feed in id order, committing after each; ``progress`` is called per feed."""
    results = []
    for feed_id, url in _feed_ids(session):
        result = _poll_one_of_many(session, feed_id, url, timeout=timeout, max_bytes=max_bytes)
        if result is None:
            continue
        results.append(result)
        if progress is not None:
            progress(result)
    return results


def poll_feed(session: Session, feed_id: int, *, timeout: float, max_bytes: int) -> PollResult:
    """Fetch one feed and ingest its entries, then commit: one transaction per feed
    (it also commits whatever the caller had pending, before fetching).

    Fetch and parse failures are stored on the feed as a one-line ``last_error``
    and returned in the result, never raised. Raises NotFound for an unknown id.
    """
    feed = session.get(Feed, feed_id)
    if feed is None:
        raise NotFound(f"no feed {feed_id}")
    url, etag, last_modified = feed.url, feed.etag, feed.last_modified
    extra_tags = [feed_tag(feed.topic)] if feed.topic is not None else []
    # End the read transaction (and commit whatever the caller had pending) before
    # the network call, so no connection idles in a transaction for `timeout` seconds.
    session.commit()

    result = PollResult(feed_id=feed_id, url=url)
    fetched_at = utcnow()
    try:
        fetched = fetch_feed(url, etag, last_modified, timeout=timeout, max_bytes=max_bytes)
        parsed = None if fetched.not_modified else parse_feed(fetched)
    except (FeedFetchError, FeedParseError) as error:
        return _record_failure(session, result, str(error), fetched_at)

    if parsed is not None:
        try:
            _ingest_entries(session, parsed, result, feed_id, extra_tags, fetched_at)
        except SQLAlchemyError as error:
            session.rollback()
            log.exception("storing the entries of feed %s failed", feed_id)
            return _record_failure(session, result, f"storing entries failed: {error}", fetched_at)

    feed = session.get(Feed, feed_id)
    assert feed is not None
    result.not_modified = fetched.not_modified
    # Validators are stored only now that the entries are in: had we stored them
    # before a failure, the next poll would get a 304 and the entries would be lost.
    feed.etag = fit_or_none(fetched.etag, MAX_ETAG)
    feed.last_modified = fit_or_none(fetched.last_modified, MAX_LAST_MODIFIED)
    feed.last_polled_at = fetched_at
    feed.last_error = result.warning
    session.commit()
    return result


def _feed_ids(session: Session) -> Iterator[tuple[int, str]]:
    """Every feed's (id, url), a page at a time by id, so feeds added meanwhile are seen too."""
    last_id = 0
    while True:
        page = session.execute(
            select(Feed.id, Feed.url).where(Feed.id > last_id).order_by(Feed.id).limit(FEEDS_PER_PAGE)
        ).all()
        if not page:
            return
        yield from ((row.id, row.url) for row in page)
        last_id = page[-1].id


def _poll_one_of_many(session: Session, feed_id: int, url: str, *, timeout: float,
                      max_bytes: int) -> PollResult | None:
    try:
        return poll_feed(session, feed_id, timeout=timeout, max_bytes=max_bytes)
    except NotFound:
        return None  # deleted since we listed it
    except Exception as error:
        # poll_feed already turns every expected failure into last_error; this is a
        # bug or a database outage with one feed, which must not stop the others.
        log.exception("polling feed %s (%s) failed", feed_id, url)
        session.rollback()
        return PollResult(feed_id=feed_id, url=url, error=one_line(f"{type(error).__name__}: {error}"))


def _record_failure(session: Session, result: PollResult, message: str, fetched_at: datetime) -> PollResult:
    result.error = one_line(message)
    log.warning("feed %s (%s): %s", result.feed_id, result.url, result.error)
    feed = session.get(Feed, result.feed_id)
    if feed is not None:
        feed.last_error = result.error
        feed.last_polled_at = fetched_at
        session.commit()
    return result


def _ingest_entries(session: Session, parsed: Any, result: PollResult, feed_id: int,
                    extra_tags: Sequence[str], fetched_at: datetime) -> None:
    bozo = parsed.get("bozo_exception")
    if bozo is not None and not isinstance(bozo, HARMLESS_BOZO):
        result.warning = one_line(f"malformed feed, read leniently: {bozo}")
    for entry in parsed.entries:
        try:
            item = article_from_entry(entry, feed_id=feed_id, extra_tags=extra_tags, fetched_at=fetched_at)
        except InvalidEntry as error:
            log.info("feed %s: entry skipped: %s", feed_id, error)
            result.skipped += 1
            continue
        existing = find_existing_article(session, item)
        if existing is not None and entry_time(entry) is None:
            # An undated entry keeps the date it was first seen with; otherwise it
            # would look freshly published on every poll.
            item = replace(item, published_at=existing.published_at)
        try:
            with session.begin_nested():
                [ingested] = ingest_articles(session, [item], feed_id=feed_id)
        except (IntegrityError, InvalidArticle) as error:
            # Another entry (or a concurrent poll) holds this URL or id; skip this one, keep the rest.
            reason = error.orig if isinstance(error, IntegrityError) else error
            log.info("feed %s: entry %s skipped: %s", feed_id, item.url, one_line(str(reason)))
            result.skipped += 1
            continue
        if ingested.created:
            result.new += 1
        elif ingested.changed:
            result.updated += 1
        else:
            result.unchanged += 1

