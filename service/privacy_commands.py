"""``newsletter subscribers export|erase EMAIL``: a reader's data for a request made by mail or phone."""

from __future__ import annotations

import json

import click
from flask import Flask
from flask.cli import AppGroup

from service.digests import find_subscriber
from service.extensions import db
from service.models import Subscriber
from service.privacy import erase_subscriber, export_subscriber

subscribers = AppGroup("subscribers", help="Export or erase a reader's data (GDPR articles 15, 17, 20).")


def register_privacy_commands(app: Flask) -> None:
    app.cli.add_command(subscribers)


@subscribers.command("export")
@click.argument("email")
def export_command(email: str) -> None:
    """Print everything held about the subscriber with this address, as JSON."""
    subscriber = _subscriber(email)
    click.echo(json.dumps(export_subscriber(db.session, subscriber.id), indent=2, ensure_ascii=False))


@subscribers.command("erase")
@click.argument("email")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def erase_command(email: str, yes: bool) -> None:
    """Delete the subscriber and everything naming them; the address stays suppressed (as a hash)."""
    subscriber = _subscriber(email)
    if not yes:
        click.confirm(f"Erase subscriber {subscriber.id} and all their data? This cannot be undone.",
                      abort=True)
    subscriber_id = subscriber.id
    erase_subscriber(db.session, subscriber_id, via="cli")
    db.session.commit()
    click.echo(f"erased subscriber {subscriber_id}; the address is on the suppression list")


def _subscriber(email: str) -> Subscriber:
    subscriber = find_subscriber(db.session, email=email)
    if subscriber is None:
        raise click.ClickException("no subscriber with this address")
    return subscriber
