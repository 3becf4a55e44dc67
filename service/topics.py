"""Topics: a named set of tags readers subscribe to.

An article belongs to every topic that shares a tag with it. A topic may have
a feed; the feed's entries are tagged with the topic's own slug tag, so they
belong to it whatever categories the feed gives them. Retiring a topic hides
it from forms and digests but keeps its subscribers' history.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service.articles import MAX_TAG_LENGTH, canonical_url, normalise_tags, tags_by_name
from service.config import FREQUENCIES
from service.errors import InvalidInput, NotFound
from service.models import Feed, Frequency, Topic, utcnow

SLUG = re.compile(r"[a-z0-9][a-z0-9-]{0,79}")  # used with fullmatch: no trailing newline slips by
TOPIC_FIELDS = frozenset({"slug", "name", "description", "tags", "default_frequency", "feed_url"})
DEMO_TOPICS = (
    ("marvel-news", "Marvel News", "The Marvel Cinematic Universe: casting, trailers, set photos.",
     ("marvel", "mcu", "robert downey jr", "hayley atwell", "avengers")),
    ("movie-news", "Movie News", "New releases, productions and box office.",
     ("movies", "mission impossible", "tom cruise", "box office")),
    ("tv-news", "TV News", "Series, streaming and television.",
     ("tv", "streaming", "what if")),
)


class InvalidTopic(InvalidInput):
    """A topic field was refused."""


@dataclass(frozen=True)
class TopicChanges:
    """Fields to set; None leaves a field as it is."""

    name: str | None = None
    description: str | None = None
    tags: Sequence[str] | None = None
    default_frequency: str | None = None
    feed_url: str | None = None
    clear_default_frequency: bool = False


def topic_changes_from_mapping(data: Mapping[str, Any], creating: bool) -> tuple[str | None, TopicChanges]:
    """Validate a JSON object of topic fields; returns (slug, changes)."""
    errors: dict[str, str] = {}
    if not isinstance(data, Mapping):
        raise InvalidTopic({"body": "must be a JSON object"})
    for unknown in sorted(set(data) - TOPIC_FIELDS):
        errors[str(unknown)[:100]] = "unknown field"
    slug = data.get("slug")
    if creating and (not isinstance(slug, str) or not SLUG.fullmatch(slug)):
        errors["slug"] = "lower-case letters, digits and dashes, at most 80 characters"
    elif not creating and "slug" in data:
        errors["slug"] = "cannot be changed; create a new topic instead"
    name = _optional_text(data, "name", 200, errors)
    if (creating or name is not None) and not name:  # a topic without a name could not be shown on a form
        errors.setdefault("name", "is required")
    description = _optional_text(data, "description", 2000, errors)
    tags = data.get("tags")
    if tags is not None and (not isinstance(tags, list) or not all(isinstance(t, str) for t in tags)):
        errors["tags"] = "must be a list of strings"
        tags = None
    elif tags is not None and any(len(t) > MAX_TAG_LENGTH for t in normalise_tags(tags)):
        errors["tags"] = f"each tag at most {MAX_TAG_LENGTH} characters"
        tags = None
    frequency = data.get("default_frequency")
    if frequency is not None and frequency not in FREQUENCIES:
        errors["default_frequency"] = f"one of {', '.join(FREQUENCIES)}, or null"
    feed_url = _optional_text(data, "feed_url", 2048, errors)
    if feed_url:
        try:
            feed_url = canonical_url(feed_url)
        except ValueError as error:
            errors["feed_url"] = str(error)
        else:
            if len(feed_url) > 2048:
                errors["feed_url"] = "must be at most 2048 characters once percent-encoded"
    if errors:
        raise InvalidTopic(errors)
    changes = TopicChanges(
        name=name, description=description, tags=tags, default_frequency=frequency,
        feed_url=feed_url, clear_default_frequency="default_frequency" in data and frequency is None,
    )
    return (slug if isinstance(slug, str) else None), changes


def create_topic(session: Session, slug: str, changes: TopicChanges) -> Topic:
    """Create a topic; a retired topic with the same slug is brought back instead."""
    existing = session.scalars(select(Topic).where(Topic.slug == slug)).one_or_none()
    if existing is not None and existing.retired_at is None:
        raise InvalidTopic({"slug": "a topic with this slug exists"})
    topic = existing or Topic(slug=slug, name=changes.name or slug, description="")
    topic.retired_at = None
    if existing is None:
        session.add(topic)
    return update_topic(session, topic, changes)


def update_topic(session: Session, topic: Topic, changes: TopicChanges) -> Topic:
    if changes.name is not None:
        if not changes.name.strip():  # the shell's commands reach here without the API's field checks
            raise InvalidTopic({"name": "is required"})
        topic.name = changes.name.strip()
    if changes.description is not None:
        topic.description = changes.description
    if changes.default_frequency is not None:
        topic.default_frequency = Frequency(changes.default_frequency)
    elif changes.clear_default_frequency:
        topic.default_frequency = None
    tag_names = normalise_tags(changes.tags) if changes.tags is not None else [t.name for t in topic.tags]
    if changes.feed_url:
        _attach_feed(session, topic, changes.feed_url)
    if topic_has_feed(session, topic):
        tag_names = list(dict.fromkeys([*tag_names, feed_tag(topic)]))
    if changes.tags is not None or changes.feed_url:
        rows = tags_by_name(session, tag_names)
        topic.tags = [rows[name] for name in tag_names]
    session.flush()
    return topic


def retire_topic(session: Session, slug: str) -> Topic:
    topic = get_topic(session, slug)
    topic.retired_at = topic.retired_at or utcnow()
    return topic


def get_topic(session: Session, slug: str, include_retired: bool = True) -> Topic:
    query = select(Topic).where(Topic.slug == slug)
    if not include_retired:
        query = query.where(Topic.retired_at.is_(None))
    topic = session.scalars(query).one_or_none()
    if topic is None:
        raise NotFound(f"no topic {slug!r}")
    return topic


def list_topics(session: Session, include_retired: bool = False) -> list[Topic]:
    query = select(Topic).order_by(Topic.name)
    if not include_retired:
        query = query.where(Topic.retired_at.is_(None))
    return list(session.scalars(query))


def feed_tag(topic: Topic) -> str:
    """The tag every entry of the topic's own feed carries."""
    return normalise_tags([topic.slug])[0]


def topic_has_feed(session: Session, topic: Topic) -> bool:
    if topic.id is None:
        return False
    return session.scalar(select(func.count()).select_from(Feed).where(Feed.topic_id == topic.id)) > 0


def topic_feed_urls(session: Session, topic: Topic) -> list[str]:
    return list(session.scalars(select(Feed.url).where(Feed.topic_id == topic.id).order_by(Feed.id)))


def seed_demo_topics(session: Session) -> int:
    """Create the demo topics when there are no topics at all; returns how many."""
    if session.scalar(select(func.count()).select_from(Topic)):
        return 0
    for slug, name, description, tags in DEMO_TOPICS:
        create_topic(session, slug, TopicChanges(name=name, description=description, tags=tags))
    return len(DEMO_TOPICS)


def _attach_feed(session: Session, topic: Topic, url: str) -> None:
    session.flush()  # the topic needs its id
    feed = session.scalars(select(Feed).where(Feed.url == url)).one_or_none()
    if feed is None:
        session.add(Feed(url=url, topic_id=topic.id))
    else:
        feed.topic_id = topic.id
    session.flush()


def _optional_text(data: Mapping[str, Any], name: str, limit: int, errors: dict[str, str]) -> str | None:
    value = data.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        errors[name] = "must be a string"
        return None
    value = value.strip()
    if len(value) > limit:
        errors[name] = f"must be at most {limit} characters"
        return None
    return value
