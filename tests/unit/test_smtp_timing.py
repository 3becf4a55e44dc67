"""The SMTP latency and error recorder (service.mail.timing), on a real SQLite store file
and, for the transport, the tests' real SMTP server."""

from __future__ import annotations

import time

import pytest

from service.mail.timing import (
    ERRORS,
    LATENCY,
    SmtpMetrics,
    SQLiteMetricsStore,
    TimedSMTPTransport,
    bucket_of,
)
from service.mail.transport import PermanentSendError, SMTPSettings, TemporarySendError

RAW = b"From: news@example.com\r\nTo: peggy@example.com\r\nSubject: Hi\r\n\r\nHello\r\n"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def store(tmp_path) -> SQLiteMetricsStore:
    return SQLiteMetricsStore(tmp_path / "metrics.sqlite3")


def stored_count(store: SQLiteMetricsStore) -> int:
    return int(sum(value for name, value in store.read([LATENCY])[LATENCY].items() if name != "sum"))


def test_an_observation_falls_in_the_first_bucket_whose_bound_it_does_not_exceed():
    assert bucket_of(0.001) == "0.005"
    assert bucket_of(0.005) == "0.005"
    assert bucket_of(0.0051) == "0.01"
    assert bucket_of(1.0) == "1.0"
    assert bucket_of(61) == "+Inf"


def test_totals_are_cumulative_buckets_with_count_and_sum(store):
    metrics = SmtpMetrics(store)
    for seconds in (0.004, 0.02, 0.02, 0.3, 90):
        metrics.observe(seconds)
    totals = metrics.totals()
    buckets = dict(totals.buckets)
    assert buckets["0.005"] == 1
    assert buckets["0.025"] == 3
    assert buckets["0.5"] == 4
    assert buckets["60.0"] == 4
    assert totals.buckets[-1] == ("+Inf", 5)
    assert totals.count == 5
    assert totals.sum == pytest.approx(90.344)
    assert [count for _, count in totals.buckets] == sorted(count for _, count in totals.buckets)


def test_errors_are_counted_by_kind_and_every_kind_is_reported(store):
    metrics = SmtpMetrics(store)
    metrics.record_error("permanent")
    metrics.record_error("permanent")
    metrics.record_error("connection")
    assert metrics.totals().errors == {"temporary": 0, "permanent": 2, "connection": 1}


def test_observations_wait_in_memory_until_enough_messages_were_sent(store):
    metrics = SmtpMetrics(store, flush_every=3, flush_seconds=3600, clock=Clock())
    metrics.observe(0.01)
    metrics.observe(0.01)
    assert stored_count(store) == 0  # no round trip per message
    metrics.observe(0.01)
    assert stored_count(store) == 3


def test_observations_are_stored_after_a_few_seconds_however_few(store):
    clock = Clock()
    metrics = SmtpMetrics(store, flush_every=100, flush_seconds=5, clock=clock)
    metrics.observe(0.01)
    clock.now += 4
    metrics.observe(0.01)
    assert stored_count(store) == 0
    clock.now += 1
    metrics.observe(0.01)
    assert stored_count(store) == 3


def test_processes_sharing_a_store_add_up(store, tmp_path):
    worker_1, worker_2 = SmtpMetrics(store), SmtpMetrics(SQLiteMetricsStore(tmp_path / "metrics.sqlite3"))
    worker_1.observe(0.1)
    worker_2.observe(0.2)
    worker_2.record_error("temporary")
    worker_1.flush()
    worker_2.flush()
    scraper = SmtpMetrics(store)
    totals = scraper.totals()
    assert totals.count == 2
    assert totals.sum == pytest.approx(0.3)
    assert totals.errors["temporary"] == 1


def test_figures_are_kept_while_the_store_is_unavailable(tmp_path):
    folder = tmp_path / "not-yet"
    metrics = SmtpMetrics(SQLiteMetricsStore(folder / "metrics.sqlite3"), flush_every=1)
    metrics.observe(0.1)  # the flush fails: no such folder
    metrics.record_error("connection")
    folder.mkdir()
    totals = metrics.totals()
    assert totals.count == 1
    assert totals.errors["connection"] == 1


def test_a_background_thread_stores_what_is_pending(store):
    metrics = SmtpMetrics(store, flush_every=1000, flush_seconds=0.05, background=True)
    try:
        metrics.observe(0.01)
        deadline = time.monotonic() + 5
        while stored_count(store) == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert stored_count(store) == 1
    finally:
        metrics.close()


def test_after_a_fork_the_child_does_not_write_the_parents_figures(store):
    metrics = SmtpMetrics(store, flush_every=1000, flush_seconds=3600)
    metrics.observe(0.01)
    metrics.after_fork()  # what os.register_at_fork runs in the child
    metrics.flush()
    assert stored_count(store) == 0


# ------------------------------------------------------------------ the transport


@pytest.fixture
def timed(smtp, store):
    metrics = SmtpMetrics(store)
    transport = TimedSMTPTransport(SMTPSettings("127.0.0.1", smtp.port, timeout=5), metrics)
    yield transport, metrics
    transport.close()


def test_a_send_is_timed(timed, smtp):
    transport, metrics = timed
    transport.send("news@example.com", ["peggy@example.com"], RAW)
    smtp.wait_for("peggy@example.com")
    totals = metrics.totals()
    assert totals.count == 1
    assert 0 < totals.sum < 5
    assert set(totals.errors.values()) == {0}


def test_refusals_are_counted_as_permanent_or_temporary_and_still_timed(timed, smtp):
    transport, metrics = timed
    smtp.fail_permanently("gone@example.com")
    smtp.fail_temporarily("full@example.com", times=1)
    with pytest.raises(PermanentSendError):
        transport.send("news@example.com", ["gone@example.com"], RAW)
    with pytest.raises(TemporarySendError):
        transport.send("news@example.com", ["full@example.com"], RAW)
    totals = metrics.totals()
    assert totals.errors == {"temporary": 1, "permanent": 1, "connection": 0}
    assert totals.count == 2


def test_a_server_that_is_down_is_a_connection_error(timed, smtp):
    transport, metrics = timed
    with smtp.down(), pytest.raises(TemporarySendError):
        transport.send("news@example.com", ["peggy@example.com"], RAW)
    assert metrics.totals().errors == {"temporary": 0, "permanent": 0, "connection": 1}


def test_the_store_holds_a_field_per_bucket_and_per_error_kind(store):
    metrics = SmtpMetrics(store)
    metrics.observe(0.01)
    metrics.record_error("permanent")
    metrics.flush()
    stored = store.read([LATENCY, ERRORS])
    assert stored[ERRORS] == {"permanent": 1.0}
    assert stored[LATENCY]["0.01"] == 1.0
