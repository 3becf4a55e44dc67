"""Consent records: when, where and how each subscription was asked for,
confirmed and withdrawn. Kept per subscription (topic), as regulators ask."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.models import ConsentRecord, Subscription


@dataclass(frozen=True)
class ConsentContext:
    """What the request that asked for a subscription tells about it."""

    source: str  # form, json, preferences, admin
    text_version: str
    page_url: str | None = None
    ip_address: str | None = None
    user_agent: str | None = None


def record_request(session: Session, subscriptions: Iterable[Subscription], context: ConsentContext,
                   now: datetime, confirmed: bool = False) -> None:
    """A new record per subscription asked for now (confirmed at once via preferences)."""
    for subscription in subscriptions:
        session.add(ConsentRecord(subscription=subscription, requested_at=now,
                                  confirmed_at=now if confirmed else None, **consent_values(context)))


def consent_values(context: ConsentContext) -> dict[str, str | None]:
    """The columns of a consent record that come from the request, cut to their lengths."""
    return {
        "source": context.source,
        "page_url": (context.page_url or None) and context.page_url[:2048],
        "ip_address": context.ip_address,
        "user_agent": (context.user_agent or "")[:512] or None,
        "consent_text_version": context.text_version,
    }


def mark_confirmed(session: Session, subscriptions: Iterable[Subscription], now: datetime) -> None:
    for record in _open_records(session, subscriptions):
        if record.confirmed_at is None:
            record.confirmed_at = now


def mark_withdrawn(session: Session, subscriptions: Iterable[Subscription], now: datetime, via: str) -> None:
    for record in _open_records(session, subscriptions):
        record.withdrawn_at = now
        record.withdrawn_via = via


def _open_records(session: Session, subscriptions: Iterable[Subscription]) -> list[ConsentRecord]:
    ids = [s.id for s in subscriptions if s.id is not None]
    if not ids:
        return []
    session.flush()
    return list(session.scalars(select(ConsentRecord).where(
        ConsentRecord.subscription_id.in_(ids), ConsentRecord.withdrawn_at.is_(None))))
