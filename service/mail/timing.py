"""How long SMTP sends take and how they fail, counted across every worker process.

Workers run as many processes on many machines, and /metrics is answered by a
web process that sends nothing. So each process adds its observations to a
store they all share: Redis when there is one (RATE_LIMIT_REDIS_URL, by default
the Redis broker), else a small SQLite file in the instance folder, shared by
the processes of one machine (the embedded mode runs web and worker as two).
Observations are summed in memory and written in one round trip every
FLUSH_EVERY messages or FLUSH_SECONDS, whichever comes first, by a background
thread, so a send never waits for the store and a store that is down costs
nothing but stale figures.
"""

from __future__ import annotations

import atexit
import bisect
import logging
import os
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import redis

from service.config import Settings
from service.mail.transport import PermanentSendError, SendError, SMTPSettings, SMTPTransport

log = logging.getLogger(__name__)

# Seconds. A local relay answers in milliseconds, a remote one in a few hundred;
# the top buckets catch connections that hang until SMTP_TIMEOUT.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
ERROR_KINDS = ("temporary", "permanent", "connection")
LATENCY = "smtp_send_seconds"
ERRORS = "smtp_errors"
SUM = "sum"
INFINITY = "+Inf"
FLUSH_EVERY = 100
FLUSH_SECONDS = 5.0
REDIS_PREFIX = "newsletter:metrics:"
SQLITE_FILE = "smtp-metrics.sqlite3"

_REPLY_CODE = re.compile(r"\d{3}\b")

Totals = dict[str, dict[str, float]]  # metric -> field -> value


# ------------------------------------------------------------------ stores


class MetricsStore(Protocol):
    def add(self, deltas: Totals) -> None:
        """Add the deltas to the shared totals, all or nothing, in one round trip."""

    def read(self, metrics: Sequence[str]) -> Totals:
        """The shared totals of these metrics."""


class RedisMetricsStore:
    """A hash per metric (field -> total), incremented in one MULTI/EXEC."""

    def __init__(self, client: redis.Redis, prefix: str = REDIS_PREFIX) -> None:
        self._client = client
        self._prefix = prefix

    def add(self, deltas: Totals) -> None:
        pipeline = self._client.pipeline(transaction=True)
        for metric, fields in deltas.items():
            for name, value in fields.items():
                if float(value).is_integer() and name != SUM:
                    pipeline.hincrby(self._prefix + metric, name, int(value))
                else:
                    pipeline.hincrbyfloat(self._prefix + metric, name, value)
        pipeline.execute()

    def read(self, metrics: Sequence[str]) -> Totals:
        pipeline = self._client.pipeline(transaction=False)
        for metric in metrics:
            pipeline.hgetall(self._prefix + metric)
        return {metric: {_text(name): float(value) for name, value in fields.items()}
                for metric, fields in zip(metrics, pipeline.execute(), strict=True)}


class SQLiteMetricsStore:
    """The same totals in a SQLite file; SQLite's locking serialises the processes."""

    def __init__(self, path: Path) -> None:
        self._path = path

    def add(self, deltas: Totals) -> None:
        rows = [(metric, name, value) for metric, fields in deltas.items() for name, value in fields.items()]
        with self._connect() as connection:  # one transaction: committed, or rolled back on error
            connection.executemany(
                "INSERT INTO metric_totals (metric, field, value) VALUES (?, ?, ?) "
                "ON CONFLICT (metric, field) DO UPDATE SET value = value + excluded.value", rows)

    def read(self, metrics: Sequence[str]) -> Totals:
        totals: Totals = {metric: {} for metric in metrics}
        with self._connect() as connection:
            for metric, name, value in connection.execute(
                    "SELECT metric, field, value FROM metric_totals"):
                if metric in totals:
                    totals[metric][name] = value
        return totals

    def _connect(self) -> sqlite3.Connection:
        connection = sqlite3.connect(self._path, timeout=5)
        connection.execute("CREATE TABLE IF NOT EXISTS metric_totals (metric TEXT NOT NULL, "
                           "field TEXT NOT NULL, value REAL NOT NULL, PRIMARY KEY (metric, field))")
        return connection


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


# ------------------------------------------------------------------ the recorder


@dataclass(frozen=True)
class SmtpTotals:
    """What every process observed so far, as Prometheus wants it."""

    buckets: list[tuple[str, int]]  # (upper bound, cumulative count), ending with ("+Inf", count)
    sum: float
    errors: dict[str, int]  # kind -> count, every kind present

    @property
    def count(self) -> int:
        return self.buckets[-1][1]


def bucket_of(seconds: float) -> str:
    """The field of the (non-cumulative) bucket an observation falls in."""
    index = bisect.bisect_left(LATENCY_BUCKETS, seconds)
    return _bound(LATENCY_BUCKETS[index]) if index < len(LATENCY_BUCKETS) else INFINITY


def _bound(value: float) -> str:
    return repr(float(value))


class SmtpMetrics:
    """Counts sends and errors in memory and adds them to the shared store now and then."""

    def __init__(self, store: MetricsStore, *, flush_every: int = FLUSH_EVERY,
                 flush_seconds: float = FLUSH_SECONDS, background: bool = False,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._store = store
        self._flush_every = flush_every
        self._flush_seconds = flush_seconds
        self._background = background
        self._clock = clock
        self._reset_state()

    def _reset_state(self) -> None:
        self._lock = threading.Lock()
        self._flushing = threading.Lock()  # one flush at a time, so deltas are never added twice
        self._pending: Totals = {}
        self._events = 0  # observations since the last flush attempt
        self._last_attempt = self._clock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def observe(self, seconds: float) -> None:
        """One send took ``seconds``, whether it succeeded or not."""
        self._add({LATENCY: {bucket_of(seconds): 1, SUM: seconds}})

    def record_error(self, kind: str) -> None:
        """A send failed: ``temporary`` (4xx), ``permanent`` (5xx) or ``connection``."""
        self._add({ERRORS: {kind: 1}})

    def flush(self) -> None:
        """Add what is pending to the store now; kept for the next try if the store is down."""
        with self._flushing:
            with self._lock:
                pending, self._pending = self._pending, {}
                self._events = 0
                self._last_attempt = self._clock()
            if not pending:
                return
            try:
                self._store.add(pending)
            except (redis.RedisError, sqlite3.Error, OSError) as error:
                log.warning("SMTP metrics not stored, kept for the next try: %s", error)
                with self._lock:
                    _merge(self._pending, pending)

    def totals(self) -> SmtpTotals:
        """Every process's figures, this one's pending ones included."""
        self.flush()
        stored = self._store.read([LATENCY, ERRORS])
        latency = stored.get(LATENCY, {})
        buckets, running = [], 0
        for bound in (*map(_bound, LATENCY_BUCKETS), INFINITY):
            running += int(latency.get(bound, 0))
            buckets.append((bound, running))
        errors = {kind: int(stored.get(ERRORS, {}).get(kind, 0)) for kind in ERROR_KINDS}
        return SmtpTotals(buckets, latency.get(SUM, 0.0), errors)

    def close(self) -> None:
        """Stop the background thread, if any, and flush."""
        thread = self._thread
        self._background = False
        if thread is not None:
            self._wake.set()
            thread.join(timeout=self._flush_seconds + 1)
        self.flush()

    def after_fork(self) -> None:
        """In a forked child: the parent's pending figures are the parent's to write."""
        self._reset_state()

    def _add(self, deltas: Totals) -> None:
        with self._lock:
            _merge(self._pending, deltas)
            self._events += 1
            due = (self._events >= self._flush_every
                   or self._clock() - self._last_attempt >= self._flush_seconds)
        if self._background:
            self._ensure_thread()
            if due:
                self._wake.set()
        elif due:
            self.flush()

    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            with self._lock:
                if self._thread is None or not self._thread.is_alive():
                    self._thread = threading.Thread(target=self._run, name="smtp-metrics", daemon=True)
                    self._thread.start()

    def _run(self) -> None:
        while self._background:
            self._wake.wait(self._flush_seconds)
            self._wake.clear()
            self.flush()


def _merge(into: Totals, deltas: Mapping[str, Mapping[str, float]]) -> None:
    for metric, fields in deltas.items():
        target = into.setdefault(metric, {})
        for name, value in fields.items():
            target[name] = target.get(name, 0) + value


def shared_smtp_totals(settings: Settings) -> SmtpTotals | None:
    """Every process's figures; None when the store cannot be read (a scrape must not fail for it)."""
    try:
        return smtp_metrics_for(settings).totals()
    except (redis.RedisError, sqlite3.Error, OSError) as error:
        log.warning("SMTP metrics could not be read: %s", error)
        return None


_recorders: dict[str | Path, SmtpMetrics] = {}
_recorders_lock = threading.Lock()


def smtp_metrics_for(settings: Settings) -> SmtpMetrics:
    """The process's recorder for this deployment's shared store."""
    where: str | Path = settings.RATE_LIMIT_REDIS_URL or settings.INSTANCE_PATH / SQLITE_FILE
    with _recorders_lock:
        if where not in _recorders:
            store: MetricsStore
            if isinstance(where, str):
                # Short timeouts: a Redis that hangs must not hold the flushing thread for long.
                client = redis.Redis.from_url(where, socket_timeout=2, socket_connect_timeout=2)
                store = RedisMetricsStore(client)
            else:
                store = SQLiteMetricsStore(where)
            recorder = SmtpMetrics(store, background=True)
            os.register_at_fork(after_in_child=recorder.after_fork)
            atexit.register(recorder.close)
            _recorders[where] = recorder
        return _recorders[where]


# ------------------------------------------------------------------ the transport


class TimedSMTPTransport(SMTPTransport):
    """An SMTPTransport that records how long each send takes and how it fails.

    A subclass rather than a wrapper, so what transport_for hands out is still an
    SMTPTransport, and it times the SMTP exchange alone: not DKIM signing, nor
    waiting for the rate limiter, which wrap it.
    """

    def __init__(self, settings: SMTPSettings, metrics: SmtpMetrics,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        super().__init__(settings)
        self._metrics = metrics
        self._clock = clock

    def _finished(self, seconds: float, error: SendError | None) -> None:
        if isinstance(error, PermanentSendError):
            self._metrics.record_error("permanent")
        elif error is not None:
            # A 4xx reply names its code; a refused, dropped or timed-out connection has none.
            self._metrics.record_error("temporary" if _REPLY_CODE.match(error.reply) else "connection")
        self._metrics.observe(seconds)
