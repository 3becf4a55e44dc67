"""Digest periods: which period a moment falls in, and whether its digest is due.

A daily period is a local calendar date, a weekly period an ISO week, both in
the subscriber's time zone. A period's digest is due from the send hour of its
day (for weekly: of the configured weekday) until the period ends, so a beat
that missed the hour still sends later that day or week.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from service.config import WEEKDAYS
from service.models import Frequency


@dataclass(frozen=True)
class Period:
    key: str  # e.g. "daily:2026-11-25" or "weekly:2026-W48"
    due: bool


@lru_cache(maxsize=512)
def zone(name: str) -> ZoneInfo:
    """The named zone, or UTC for a name this system does not know."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


def is_valid_timezone(name: str) -> bool:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return False
    return True


def current_period(frequency: Frequency, now: datetime, timezone: str, send_hour: int,
                   weekly_day: str) -> Period:
    """The period ``now`` falls in for this frequency and zone, and whether it is due."""
    local = now.astimezone(zone(timezone))
    if frequency == Frequency.DAILY:
        return Period(f"daily:{local.date().isoformat()}", local.hour >= send_hour)
    year, week, weekday = local.isocalendar()
    send_weekday = WEEKDAYS.index(weekly_day) + 1
    due = weekday > send_weekday or (weekday == send_weekday and local.hour >= send_hour)
    return Period(f"weekly:{year}-W{week:02d}", due)
