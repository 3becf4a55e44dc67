"""CLI for bounces and deliverability: ``newsletter bounces|sending|suppressions ...``.

``bounces ingest`` is meant for an MTA pipe, e.g. in Postfix's master.cf::

    bounces unix - n n - - pipe
      user=newsletter argv=/srv/app/.venv/bin/newsletter bounces ingest --recipient ${original_recipient}

It exits 0 for anything that is not a bounce, so the MTA never answers junk
sent to the bounce address, and 75 (EX_TEMPFAIL) when the database is down, so
the MTA keeps the report and tries again later.
"""

from __future__ import annotations

from typing import BinaryIO

import click
from flask import Flask
from flask.cli import AppGroup
from sqlalchemy.exc import OperationalError

from service.bounce_reports import NotABounce
from service.bounces import (
    find_suppression,
    ingest_message,
    lift_suppression,
    policy_bounce_count,
)
from service.config import get_settings
from service.extensions import db
from service.models import SuppressionReason
from service.pauses import open_pause, pause_sending, resume_sending
from service.suppressions import canonical_address, suppress

EX_TEMPFAIL = 75

bounces = AppGroup("bounces", help="Record bounces and complaints.")
sending = AppGroup("sending", help="Pause and resume all sending.")
suppressions = AppGroup("suppressions", help="The list of addresses never mailed again.")


def register_bounce_commands(app: Flask) -> None:
    for group in (bounces, sending, suppressions):
        app.cli.add_command(group)


@bounces.command("ingest")
@click.argument("source", type=click.File("rb"), default="-", metavar="[FILE]")
@click.option("--recipient", metavar="ADDRESS",
              help="The envelope recipient the report was delivered to (our VERP address).")
def ingest_command(source: BinaryIO, recipient: str | None) -> None:
    """Record the bounce or complaint in FILE, or on standard input."""
    raw = source.read()
    try:
        result = ingest_message(db.session, get_settings(), raw, envelope_recipient=recipient)
        db.session.commit()
    except NotABounce as error:
        db.session.rollback()
        click.echo(f"not a bounce or complaint, ignored: {error}", err=True)
        return
    except OperationalError:
        db.session.rollback()
        click.echo("the database is unavailable; try again later", err=True)
        raise click.exceptions.Exit(EX_TEMPFAIL) from None
    for bounce in result.recorded:
        click.echo(f"bounce {bounce.id}: {bounce.kind.value}, status {bounce.status or '-'}, "
                   f"delivery {bounce.delivery_id or '-'}, subscriber {bounce.subscriber_id or '-'}")
    if result.unmatched:
        click.echo(f"{result.unmatched} report(s) about none of our deliveries or subscribers, ignored")
    if not result.reports:
        click.echo("nothing to record: a delay warning, a success notice or a not-spam report")


@sending.command("pause")
@click.argument("reason")
def pause_command(reason: str) -> None:
    """Stop sending: workers defer mail until 'sending resume'. Nothing is lost."""
    already = open_pause(db.session)
    pause = pause_sending(db.session, reason)
    db.session.commit()
    if already is not None:
        click.echo(f"sending was paused already, since {pause.created_at:%Y-%m-%d %H:%M} UTC: {pause.reason}")
    else:
        click.echo("sending paused; deferred mail goes out after 'newsletter sending resume'")


@sending.command("resume")
def resume_command() -> None:
    """Send again; deferred mail goes out at its next attempt."""
    closed = resume_sending(db.session)
    db.session.commit()
    click.echo("sending resumed" if closed else "sending was not paused")


@sending.command("status")
def status_command() -> None:
    """Whether sending is paused, and the policy bounces counting toward a pause."""
    pause = open_pause(db.session)
    if pause is None:
        click.echo("sending: running")
    else:
        click.echo(f"sending: paused since {pause.created_at:%Y-%m-%d %H:%M} UTC: {pause.reason}")
    threshold = get_settings().POLICY_PAUSE_THRESHOLD
    limit = f"pauses at {threshold}" if threshold else "automatic pause off"
    click.echo(f"policy bounces counting toward a pause: {policy_bounce_count(db.session)} ({limit})")


@suppressions.command("add")
@click.argument("email")
@click.option("--detail", help="Why, for the record.")
def add_command(email: str, detail: str | None) -> None:
    """Never mail EMAIL again (until 'suppressions remove')."""
    entry = suppress(db.session, _address(email), SuppressionReason.MANUAL, detail or "added by an operator")
    db.session.commit()
    click.echo(f"suppressed ({entry.reason.value})")


@suppressions.command("remove")
@click.argument("email")
def remove_command(email: str) -> None:
    """Mail EMAIL again, and forget its soft bounces."""
    removed = lift_suppression(db.session, _address(email))
    db.session.commit()
    click.echo("removed from the suppression list" if removed else "was not on the suppression list")


@suppressions.command("check")
@click.argument("email")
def check_command(email: str) -> None:
    """Whether EMAIL is on the suppression list, and why."""
    entry = find_suppression(db.session, _address(email))
    if entry is None:
        click.echo("not suppressed")
    else:
        click.echo(f"suppressed since {entry.created_at:%Y-%m-%d %H:%M} UTC ({entry.reason.value}"
                   f"{': ' + entry.detail if entry.detail else ''})")


def _address(email: str) -> str:
    # Lenient, as lookups are: readers stored before the form's checks tightened (a local part
    # outside ASCII) must still be suppressible, and findable by either spelling of their domain.
    address = canonical_address(email)
    if "@" not in address.strip("@"):
        raise click.BadParameter("not an email address", param_hint="EMAIL")
    return address
