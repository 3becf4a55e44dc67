"""What operators ask of the ledger: counts per stream and digest run, and retrying failures."""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from service.models import Delivery, DeliveryKind, DeliveryState, utcnow


@dataclass
class StreamCounts:
    """Deliveries of one kind (and one digest period, when given) by state."""

    kind: str
    period: str | None
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def delivery_counts(session: Session, kind: DeliveryKind | None = None, period: str | None = None,
                    by_period: bool = False) -> list[StreamCounts]:
    """Counts by state for each stream (kind), or for each digest run with ``by_period``."""
    group = [Delivery.kind, Delivery.period] if by_period or period else [Delivery.kind]
    query = select(*group, Delivery.state, func.count()).group_by(*group, Delivery.state)
    if kind is not None:
        query = query.where(Delivery.kind == kind)
    if period is not None:
        query = query.where(Delivery.period == period)
    streams: dict[tuple[str, str | None], StreamCounts] = {}
    for row in session.execute(query):
        stream_kind, stream_period = row[0].value, (row[1] if len(group) == 2 else None)
        stream = streams.setdefault((stream_kind, stream_period), StreamCounts(
            stream_kind, stream_period, {state.value: 0 for state in DeliveryState}))
        stream.counts[row[-2].value] = row[-1]
    return sorted(streams.values(), key=lambda s: (s.kind, s.period or ""))


def retry_failed(session: Session, kind: DeliveryKind | None = None, period: str | None = None) -> list[int]:
    """Put failed deliveries back in the queue with fresh attempts; returns their ids.

    The send-time checks still apply, so an address suppressed or unsubscribed
    since is not mailed. The caller commits, then publishes the ids.
    """
    query = select(Delivery.id).where(Delivery.state == DeliveryState.FAILED)
    if kind is not None:
        query = query.where(Delivery.kind == kind)
    if period is not None:
        query = query.where(Delivery.period == period)
    ids = list(session.scalars(query.order_by(Delivery.id)))
    if ids:
        session.execute(
            update(Delivery).where(Delivery.id.in_(ids))
            .values(state=DeliveryState.QUEUED, attempts=0, next_attempt_at=utcnow(), updated_at=utcnow())
            .execution_options(synchronize_session=False)
        )
    return ids
