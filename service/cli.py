"""The ``newsletter`` console script: Flask's CLI bound to our application factory."""

from __future__ import annotations

import click
from flask import Flask
from flask.cli import FlaskGroup

from service import create_app
from service.config import ConfigError


def _create_app() -> Flask:
    try:
        return create_app()
    except ConfigError as error:
        raise click.ClickException(f"configuration error: {error}") from None


@click.group(cls=FlaskGroup, create_app=_create_app, add_default_commands=True)
def main() -> None:
    """Newsletter service: subscriptions, confirmations and digests."""
if __name__ == "__main__":
    main()
