"""CLI for publishers: ``newsletter topics ...`` and ``newsletter digests ...``."""

from __future__ import annotations

import sys

import click
from flask.cli import AppGroup
from sqlalchemy import func, select

from service.config import FREQUENCIES, get_settings
from service.digests import DigestFilter, find_subscriber, plan_digests, preview_digest
from service.errors import InvalidInput, NotFound
from service.extensions import db
from service.models import Frequency, Subscriber, SubscriberStatus
from service.topics import (
    TopicChanges,
    create_topic,
    get_topic,
    list_topics,
    retire_topic,
    topic_feed_urls,
    update_topic,
)
from tasks.delivery import publish_batches

topics = AppGroup("topics", help="Create, list, change and retire topics.")
digests = AppGroup("digests", help="Preview and send digests.")


@topics.command("list")
@click.option("--all", "include_retired", is_flag=True, help="Include retired topics.")
def list_command(include_retired: bool) -> None:
    """List topics with their tags."""
    for topic in list_topics(db.session, include_retired=include_retired):
        retired = " (retired)" if topic.retired_at else ""
        click.echo(f"{topic.slug}\t{topic.name}{retired}\ttags: {', '.join(t.name for t in topic.tags)}")
        for url in topic_feed_urls(db.session, topic):
            click.echo(f"\tfeed: {url}")


@topics.command("create")
@click.argument("slug")
@click.argument("name")
@click.option("--description", default="")
@click.option("--tag", "tags", multiple=True, help="Repeat for each tag.")
@click.option("--default-frequency", type=click.Choice(FREQUENCIES))
@click.option("--feed-url", help="An RSS or Atom feed whose entries all belong to this topic.")
def create_command(slug: str, name: str, description: str, tags: tuple[str, ...],
                   default_frequency: str | None, feed_url: str | None) -> None:
    """Create a topic (or bring back a retired one with this slug)."""
    changes = TopicChanges(name=name, description=description, tags=list(tags),
                           default_frequency=default_frequency, feed_url=feed_url)
    _run(lambda: create_topic(db.session, slug, changes))
    click.echo(f"created topic {slug}")


@topics.command("update")
@click.argument("slug")
@click.option("--name")
@click.option("--description")
@click.option("--tag", "tags", multiple=True, help="Replaces all tags; repeat for each tag.")
@click.option("--default-frequency", type=click.Choice(FREQUENCIES))
@click.option("--feed-url")
def update_command(slug: str, name: str | None, description: str | None, tags: tuple[str, ...],
                   default_frequency: str | None, feed_url: str | None) -> None:
    """Change a topic's fields; options not given stay as they are."""
    changes = TopicChanges(name=name, description=description, tags=list(tags) if tags else None,
                           default_frequency=default_frequency, feed_url=feed_url)
    _run(lambda: update_topic(db.session, get_topic(db.session, slug), changes))
    click.echo(f"updated topic {slug}")


@topics.command("retire")
@click.argument("slug")
def retire_command(slug: str) -> None:
    """Hide a topic from forms and digests; its subscribers' history is kept."""
    _run(lambda: retire_topic(db.session, slug))
    click.echo(f"retired topic {slug}")


@digests.command("send")
@click.option("--frequency", type=click.Choice(FREQUENCIES), help="Only readers of this frequency.")
@click.option("--topic", "topic_slug", help="Only readers of this topic.")
def send_command(frequency: str | None, topic_slug: str | None) -> None:
    """Plan the current period's digests now, whatever the hour, and queue their sending.

    A second run in the same period sends nothing more.
    """
    topic_id = _run(lambda: get_topic(db.session, topic_slug, include_retired=False)).id \
        if topic_slug else None
    only = DigestFilter(Frequency(frequency) if frequency else None, topic_id)
    total = db.session.scalar(select(func.count()).select_from(Subscriber)
                              .where(Subscriber.status == SubscriberStatus.CONFIRMED))
    planned = 0
    with _progress(total, "planning digests") as progress:
        for batch in plan_digests(db.session, get_settings(), force=True, only=only):
            publish_batches(batch.delivery_ids, get_settings().DIGEST_BATCH_SIZE)
            planned += len(batch.delivery_ids)
            progress.update(batch.subscribers_seen, batch.period, len(batch.delivery_ids))
    click.echo(f"planned and queued {planned} digests")


@digests.command("preview")
@click.argument("email")
@click.option("--text", "as_text", is_flag=True, help="The text part instead of the HTML.")
def preview_command(email: str, as_text: bool) -> None:
    """Print what this subscriber's digest would hold now; sends nothing."""
    subscriber = find_subscriber(db.session, email=email)
    if subscriber is None:
        raise click.ClickException(f"no subscriber {email}")
    rendered = preview_digest(db.session, get_settings(), subscriber)
    if rendered is None:
        click.echo("nothing new: no digest would be sent now")
        return
    click.echo(f"Subject: {rendered.subject}\n")
    click.echo(rendered.text if as_text else rendered.html)


class _progress:
    """A progress bar on a terminal, one plain line per batch in logs."""

    def __init__(self, total: int, label: str) -> None:
        self.interactive = sys.stdout.isatty()
        self.bar = click.progressbar(length=total, label=label) if self.interactive else None
        self.seen = 0
        self.total = total

    def __enter__(self) -> _progress:
        if self.bar is not None:
            self.bar.__enter__()
        return self

    def update(self, seen: int, period: str, planned: int) -> None:
        self.seen += seen
        if self.bar is not None:
            self.bar.update(seen)
        else:
            click.echo(f"{period}: {self.seen}/{self.total} subscribers looked at, {planned} digests planned")

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc)


def _run(action):  # type: ignore[no-untyped-def]
    """Run a domain call and commit; turn refusals into one clear CLI error."""
    try:
        result = action()
    except InvalidInput as invalid:
        db.session.rollback()
        raise click.ClickException("; ".join(f"{k}: {v}" for k, v in invalid.errors.items())) from None
    except NotFound as missing:
        db.session.rollback()
        raise click.ClickException(str(missing)) from None
    db.session.commit()
    return result
