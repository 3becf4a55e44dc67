"""Operators' CLI for the ledger: ``newsletter deliveries stats|retry-failed``."""

from __future__ import annotations

import click
from flask.cli import AppGroup

from service.delivery_reports import delivery_counts, retry_failed
from service.extensions import db
from service.models import DeliveryKind, DeliveryState
from tasks.delivery import publish_deliveries

deliveries = AppGroup("deliveries", help="Inspect and retry the delivery ledger.")
KINDS = [kind.value for kind in DeliveryKind]


@deliveries.command("stats")
@click.option("--kind", type=click.Choice(KINDS), help="Only this stream.")
@click.option("--period", help="Only this digest run, e.g. daily:2026-11-25.")
@click.option("--by-period", is_flag=True, help="One line per digest run.")
def stats_command(kind: str | None, period: str | None, by_period: bool) -> None:
    """Counts of queued, sent, deferred, failed, bounced and suppressed messages."""
    states = [state.value for state in DeliveryState]
    click.echo(f"{'stream':<32}" + "".join(f"{state:>11}" for state in states) + f"{'total':>9}")
    for stream in delivery_counts(db.session, DeliveryKind(kind) if kind else None, period, by_period):
        name = stream.kind + (f" {stream.period}" if stream.period else "")
        click.echo(f"{name:<32}" + "".join(f"{stream.counts[s]:>11}" for s in states) + f"{stream.total:>9}")


@deliveries.command("retry-failed")
@click.option("--kind", type=click.Choice(KINDS))
@click.option("--period")
def retry_failed_command(kind: str | None, period: str | None) -> None:
    """Queue failed deliveries again with fresh attempts (suppressions still apply)."""
    ids = retry_failed(db.session, DeliveryKind(kind) if kind else None, period)
    db.session.commit()
    published = publish_deliveries(ids)
    click.echo(f"queued {len(ids)} failed deliveries again ({published} published now)")
