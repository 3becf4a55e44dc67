"""Topics readers can subscribe to."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service.models import Topic

DEMO_TOPICS = (
    ("marvel-news", "Marvel News", "The Marvel Cinematic Universe: casting, trailers, set photos."),
    ("movie-news", "Movie News", "New releases, productions and box office."),
    ("tv-news", "TV News", "Series, streaming and television."),
)


def seed_demo_topics(session: Session) -> int:
    """Create the demo topics when there are no topics at all; returns how many."""
    if session.scalar(select(func.count()).select_from(Topic)):
        return 0
    for slug, name, description in DEMO_TOPICS:
        session.add(Topic(slug=slug, name=name, description=description))
    session.flush()
    return len(DEMO_TOPICS)
