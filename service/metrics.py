"""Prometheus metrics, read from the database at scrape time.

Web processes, workers and beat run as many processes on many machines; the
ledger in the database is the one place that sees all of them. So instead of
per-process counters, each scrape counts rows: readers and subscriptions by
state, deliveries by kind and state, bounces by kind, and the broker's queue
depth. Cheap enough with the indexes we have; scrape every 30-60 s.

What the ledger cannot know, how long SMTP sends take and how they fail, the
workers add up in a store they share (service.mail.timing); SmtpCollector
reads it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service.mail.timing import SmtpTotals
from service.models import Bounce, Delivery, Subscriber, Subscription, Topic


class LedgerCollector(Collector):
    def __init__(self, session_factory: Callable[[], Session], queue_depth: Callable[[], int | None]) -> None:
        self._session = session_factory
        self._queue_depth = queue_depth

    def collect(self) -> Iterator[Metric]:
        session = self._session()
        readers = GaugeMetricFamily("newsletter_subscribers", "Readers by status", labels=["status"])
        for status, count in session.execute(
                select(Subscriber.status, func.count()).group_by(Subscriber.status)):
            readers.add_metric([status.value], count)
        yield readers

        subscriptions = GaugeMetricFamily("newsletter_subscriptions", "Subscriptions by topic and status",
                                          labels=["topic", "status"])
        for slug, status, count in session.execute(
                select(Topic.slug, Subscription.status, func.count()).join(Topic)
                .group_by(Topic.slug, Subscription.status)):
            subscriptions.add_metric([slug, status.value], count)
        yield subscriptions

        deliveries = GaugeMetricFamily("newsletter_deliveries", "Ledger rows by kind and state "
                                       "(confirmations sent, digests planned/sent/failed ...)",
                                       labels=["kind", "state"])
        for kind, state, count in session.execute(
                select(Delivery.kind, Delivery.state, func.count()).group_by(Delivery.kind, Delivery.state)):
            deliveries.add_metric([kind.value, state.value], count)
        yield deliveries

        bounces = GaugeMetricFamily("newsletter_bounces", "Bounces and complaints recorded", labels=["kind"])
        for kind, count in session.execute(select(Bounce.kind, func.count()).group_by(Bounce.kind)):
            bounces.add_metric([kind.value], count)
        yield bounces

        depth = self._queue_depth()
        if depth is not None:
            yield GaugeMetricFamily("newsletter_queue_depth", "Tasks waiting in the broker's queue",
                                    value=depth)


class SmtpCollector(Collector):
    """SMTP send latency and errors by kind, as every worker process observed them."""

    def __init__(self, totals: Callable[[], SmtpTotals | None]) -> None:
        self._totals = totals

    def collect(self) -> Iterator[Metric]:
        totals = self._totals()
        if totals is None:
            return
        yield HistogramMetricFamily("newsletter_smtp_send_seconds",
                                    "Time each SMTP send took, successful or not (connecting included)",
                                    buckets=totals.buckets, sum_value=totals.sum)
        errors = CounterMetricFamily(
            "newsletter_smtp_errors", "SMTP sends that failed: temporary (4xx reply), permanent (5xx reply) "
            "or connection (refused, dropped or timed out)", labels=["kind"])
        for kind, count in totals.errors.items():
            errors.add_metric([kind], count)
        yield errors
