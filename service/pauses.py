"""Pausing all sending, e.g. after a relay starts rejecting us for policy reasons.

While a pause is open, workers defer mail instead of sending it; nothing is
lost, it goes out after ``resume_sending``.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.models import SendingPause, utcnow


def open_pause(session: Session) -> SendingPause | None:
    return session.scalars(
        select(SendingPause).where(SendingPause.resumed_at.is_(None)).order_by(SendingPause.id)
    ).first()


def pause_sending(session: Session, reason: str) -> SendingPause:
    """Open a pause unless one is open already."""
    pause = open_pause(session)
    if pause is None:
        pause = SendingPause(reason=reason)
        session.add(pause)
        session.flush()
    return pause


def resume_sending(session: Session) -> int:
    """Close every open pause; returns how many were open."""
    pauses = session.scalars(select(SendingPause).where(SendingPause.resumed_at.is_(None))).all()
    now = utcnow()
    for pause in pauses:
        pause.resumed_at = now
    return len(pauses)
