"""Command-line tools, available as ``newsletter <command>`` (or ``flask --app service``)."""

from __future__ import annotations

import signal
import subprocess
import sys
from urllib.parse import urlsplit

import click
import flask_migrate
from flask import Flask, current_app
from flask.cli import with_appcontext
from werkzeug.serving import run_simple

from service.admin_commands import api_keys
from service.bounce_commands import register_bounce_commands
from service.config import get_settings
from service.content_commands import digests, topics
from service.delivery_commands import deliveries
from service.extensions import db
from service.feed_commands import register_feed_commands
from service.privacy_commands import register_privacy_commands
from service.topics import seed_demo_topics
from tasks.delivery import sweep_stalled_deliveries

LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1", "0.0.0.0"})


def links_miss_this_server(public_base_url: str, port: int) -> bool:
    """PUBLIC_BASE_URL names this machine on another port than the one `newsletter dev` serves.

    A public host name is left alone: a proxy in front may well forward it here.
    """
    parts = urlsplit(public_base_url)
    if parts.hostname not in LOCAL_HOSTS:
        return False
    try:
        named_port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:  # a port that is no number, or out of range: no link reaches any server
        return True
    return named_port != port


def register_commands(app: Flask) -> None:
    app.cli.add_command(seed_demo_command)
    app.cli.add_command(sweep_command)
    app.cli.add_command(dev_command)
    app.cli.add_command(topics)
    app.cli.add_command(digests)
    register_feed_commands(app)
    register_bounce_commands(app)
    app.cli.add_command(deliveries)
    app.cli.add_command(api_keys)
    register_privacy_commands(app)


@click.command("seed-demo")
@with_appcontext
def seed_demo_command() -> None:
    """Create the demo topics (Marvel News, ...) if there are no topics yet."""
    created = seed_demo_topics(db.session)
    db.session.commit()
    click.echo(f"created {created} demo topics" if created else "topics exist already; nothing to do")


@click.command("sweep")
@with_appcontext
def sweep_command() -> None:
    """Publish deliveries whose task was lost (what beat does every DELIVERY_SWEEP_SECONDS)."""
    published = sweep_stalled_deliveries.run()
    click.echo(f"published {published} stalled deliveries")


@click.command("dev")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=5000, show_default=True,
              help="Set PUBLIC_BASE_URL too if you change this, so links in emails match (warned if not).")
@with_appcontext
def dev_command(host: str, port: int) -> None:
    """Run everything on one machine: migrations, web server, worker and beat."""
    settings = get_settings()
    click.echo("applying database migrations ...")
    flask_migrate.upgrade()
    if settings.SEED_DEMO_TOPICS and seed_demo_topics(db.session):
        db.session.commit()
        click.echo("created the demo topics")
    base = settings.PUBLIC_BASE_URL
    if links_miss_this_server(base, port):
        click.echo(f"  Warning: links in emails point at {base}, but this server listens on port {port}.\n"
                   f"  Set PUBLIC_BASE_URL=http://127.0.0.1:{port} so they reach it.\n", err=True)
    schedule = settings.INSTANCE_PATH / "celerybeat-schedule"
    worker = subprocess.Popen([
        sys.executable, "-m", "celery", "-A", "tasks.worker", "worker", "--beat",
        "--pool=solo", "--loglevel=INFO", f"--schedule={schedule}",
    ])
    click.echo(f"\n  Subscribe form:  {base}/subscribe")
    if settings.uses_outbox:
        click.echo(f"  Outbox:          {base}/outbox   (mail is stored here, not sent)")
    click.echo(f"  Database:        {settings.DATABASE_URL}\n")
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    # Stop the worker too when we are asked to stop, not only on Ctrl+C.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    try:
        run_simple(host, port, app, threaded=True, use_reloader=False)
    finally:
        worker.terminate()
        worker.wait(timeout=15)
