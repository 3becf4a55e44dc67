"""``newsletter feeds ...``: register RSS/Atom feeds and poll them now."""

from __future__ import annotations

import sys

import click
from flask import Flask
from flask.cli import with_appcontext

from service.config import get_settings
from service.errors import InvalidInput, NotFound
from service.extensions import db
from service.feeds import PollResult, add_feed, count_feeds, poll_all_feeds


def register_feed_commands(app: Flask) -> None:
    app.cli.add_command(feeds)


@click.group("feeds")
def feeds() -> None:
    """RSS and Atom feeds whose entries become articles."""


@feeds.command("add")
@click.argument("url")
@click.option("--topic", "topic_slug", metavar="SLUG",
              help="Tag every entry with this topic's feed tag, so all of them belong to it.")
@with_appcontext
def add_command(url: str, topic_slug: str | None) -> None:
    """Register the feed at URL (again is harmless)."""
    try:
        feed = add_feed(db.session, url, topic_slug)
    except InvalidInput as error:
        raise click.BadParameter(error.errors.get("url", str(error)), param_hint="URL") from None
    except NotFound as error:
        raise click.BadParameter(str(error), param_hint="--topic") from None
    db.session.commit()
    topic = f" for topic {feed.topic.slug}" if feed.topic is not None else ""
    click.echo(f"feed {feed.id}: {feed.url}{topic}")


@feeds.command("poll")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True),
              help="Seconds allowed per feed fetch. [default: FEED_FETCH_TIMEOUT]")
@click.option("--max-bytes", type=click.IntRange(min=1),
              help="Largest feed body accepted. [default: FEED_MAX_BYTES]")
@with_appcontext
def poll_command(timeout: float | None, max_bytes: int | None) -> None:
    """Poll every feed now (what beat does every FEED_POLL_SECONDS), one line per feed."""
    if timeout is None or max_bytes is None:
        settings = get_settings()
        timeout = settings.FEED_FETCH_TIMEOUT if timeout is None else timeout
        max_bytes = settings.FEED_MAX_BYTES if max_bytes is None else max_bytes
    if sys.stdout.isatty():
        # A bar while polling; the per-feed lines once it is done, so they do not tear it.
        with click.progressbar(length=count_feeds(db.session), label="polling feeds",
                               item_show_func=lambda r: r.url if r is not None else None) as bar:
            results = poll_all_feeds(db.session, timeout=timeout, max_bytes=max_bytes,
                                     progress=lambda result: bar.update(1, result))
        for result in results:
            click.echo(result.describe())
    else:
        results = poll_all_feeds(db.session, timeout=timeout, max_bytes=max_bytes,
                                 progress=lambda result: click.echo(result.describe()))
    click.echo(_totals(results))


def _totals(results: list[PollResult]) -> str:
    failed = sum(1 for r in results if r.error)
    return (f"polled {len(results)} feeds: {sum(r.new for r in results)} new, "
            f"{sum(r.updated for r in results)} updated, {sum(r.skipped for r in results)} skipped, "
            f"{failed} failed")
