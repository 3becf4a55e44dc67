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
    """The named zone, or UTC for a name that is no place this system knows."""
    return ZoneInfo(name) if is_valid_timezone(name) else ZoneInfo("UTC")


# Files in the zone database that are no place's time: the server's own setting (which may differ
# between the web and worker machines), a placeholder zone, and a copy of America/New_York kept
# for old POSIX rules.
_NOT_A_PLACE = frozenset({"localtime", "Factory", "posixrules"})


def is_valid_timezone(name: str) -> bool:
    if name in _NOT_A_PLACE:
        return False
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
