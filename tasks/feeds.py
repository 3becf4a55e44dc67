"""The beat task that polls every feed. It loads settings, calls service.feeds and logs."""

from __future__ import annotations

import logging

from celery import shared_task

from service.config import get_settings
from service.extensions import db
from service.feeds import poll_all_feeds
from tasks import POLL_FEEDS

log = logging.getLogger(__name__)


@shared_task(name=POLL_FEEDS)
def poll_feeds() -> int:
    """Poll every feed once; returns how many new articles arrived.

    Harmless to run twice or concurrently: articles are unique by URL and
    external id, and a broken feed only records its ``last_error``.
    """
    settings = get_settings()
    results = poll_all_feeds(db.session, timeout=settings.FEED_FETCH_TIMEOUT,
                             max_bytes=settings.FEED_MAX_BYTES)
    failed = sum(1 for result in results if result.error)
    new = sum(result.new for result in results)
    log.info("polled %d feeds: %d new articles, %d feeds failed", len(results), new, failed)
    return new
