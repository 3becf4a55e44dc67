"""``newsletter api-keys create|list|revoke``: named, revocable admin API keys."""

from __future__ import annotations

import click
from flask.cli import AppGroup

from service.api_keys import create_api_key, list_api_keys, revoke_api_key
from service.errors import InvalidInput, NotFound
from service.extensions import db

api_keys = AppGroup("api-keys", help="Create, list and revoke named admin API keys.")


@api_keys.command("create")
@click.argument("name")
def create_command(name: str) -> None:
    """Create a key; it is printed once and only its hash is stored."""
    try:
        _, key = create_api_key(db.session, name)
    except InvalidInput as invalid:
        raise click.ClickException(invalid.errors["name"]) from None
    db.session.commit()
    click.echo(key)


@api_keys.command("list")
def list_command() -> None:
    for row in list_api_keys(db.session):
        state = f"revoked {row.revoked_at:%Y-%m-%d}" if row.revoked_at else "active"
        used = f"last used {row.last_used_at:%Y-%m-%d %H:%M}" if row.last_used_at else "never used"
        click.echo(f"{row.name}\t{state}\t{used}")


@api_keys.command("revoke")
@click.argument("name")
def revoke_command(name: str) -> None:
    try:
        revoke_api_key(db.session, name)
    except NotFound as missing:
        raise click.ClickException(str(missing)) from None
    db.session.commit()
    click.echo(f"revoked {name}")
