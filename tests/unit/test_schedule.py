from datetime import UTC, datetime

from service.models import Frequency
from service.schedule import current_period, is_valid_timezone


def _at(hour: int, day: int = 25) -> datetime:
    return datetime(2026, 11, day, hour, 30, tzinfo=UTC)  # 25 Nov 2026 is a Wednesday


def test_a_daily_period_is_the_date_and_is_due_from_the_send_hour():
    assert current_period(Frequency.DAILY, _at(7), "UTC", 8, "monday").key == "daily:2026-11-25"
    assert not current_period(Frequency.DAILY, _at(7), "UTC", 8, "monday").due
    assert current_period(Frequency.DAILY, _at(8), "UTC", 8, "monday").due
    assert current_period(Frequency.DAILY, _at(23), "UTC", 8, "monday").due


def test_a_weekly_period_is_the_iso_week_and_is_due_from_the_send_day_and_hour():
    wednesday = current_period(Frequency.WEEKLY, _at(7), "UTC", 8, "wednesday")
    assert wednesday.key == "weekly:2026-W48"
    assert not wednesday.due
    assert current_period(Frequency.WEEKLY, _at(8), "UTC", 8, "wednesday").due
    assert current_period(Frequency.WEEKLY, _at(0), "UTC", 8, "monday").due  # missed Monday: still due
    assert not current_period(Frequency.WEEKLY, _at(23), "UTC", 8, "friday").due


def test_the_period_follows_the_subscriber_time_zone():
    # 23:30 UTC on the 25th is already 12:30 on the 26th in Auckland.
    auckland = current_period(Frequency.DAILY, _at(23), "Pacific/Auckland", 8, "monday")
    assert auckland.key == "daily:2026-11-26"
    assert auckland.due
    # 07:30 UTC is 23:30 the day before in Los Angeles.
    assert current_period(Frequency.DAILY, _at(7), "America/Los_Angeles", 8, "monday").key == \
        "daily:2026-11-24"


def test_an_unknown_time_zone_falls_back_to_utc():
    assert not is_valid_timezone("Mars/Olympus_Mons")
    assert current_period(Frequency.DAILY, _at(9), "Mars/Olympus_Mons", 8, "monday").key == \
        "daily:2026-11-25"


def test_zone_files_that_are_no_place_are_refused():
    # 'localtime' is whatever the server is set to, and web and worker machines may differ.
    for name in ("localtime", "Factory", "posixrules"):
        assert not is_valid_timezone(name)
    assert is_valid_timezone("Europe/Berlin") and is_valid_timezone("UTC")
