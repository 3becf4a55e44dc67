"""Tasks that send ledger rows. They load, call service.deliveries and record."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

from celery import shared_task
from flask import current_app
from kombu.exceptions import OperationalError as BrokerUnavailable
from sqlalchemy.exc import InterfaceError, OperationalError

from service.config import get_settings
from service.deliveries import RetryLater, deliver, deliver_many, reschedule_stalled
from service.extensions import db
from service.mail.transport import transport_for
from tasks import SWEEP_STALLED_DELIVERIES

log = logging.getLogger(__name__)

# A database that drops a connection or restarts: try the task again soon. The
# ledger row tells the next attempt what is left to do.
DATABASE_TROUBLE = (OperationalError, InterfaceError)
DB_RETRY = {"autoretry_for": DATABASE_TROUBLE, "retry_backoff": 1, "retry_backoff_max": 60,
            "retry_jitter": True, "retry_kwargs": {"max_retries": 20}}


@shared_task(bind=True, name="newsletter.send_delivery", max_retries=None, **DB_RETRY)
def send_delivery(self, delivery_id: int) -> str | None:  # type: ignore[no-untyped-def]
    """Send one delivery; the ledger, not Celery, counts attempts."""
    settings = get_settings()
    transport = transport_for(settings, db.session)
    try:
        result = deliver(db.session, delivery_id, transport, settings)
    except RetryLater as later:
        raise self.retry(countdown=later.countdown) from None
    finally:
        transport.close()
    return result.state.value if result.state else None


@shared_task(name="newsletter.send_delivery_batch", **DB_RETRY)
def send_delivery_batch(delivery_ids: list[int]) -> int:
    """Send several deliveries over one SMTP connection; each temporary failure retries on its own."""
    settings = get_settings()
    transport = transport_for(settings, db.session)
    try:
        batch = deliver_many(db.session, delivery_ids, transport, settings)
    finally:
        transport.close()
    retry = _bound(send_delivery)
    for delivery_id, countdown in batch.retries:
        retry.apply_async((delivery_id,), countdown=countdown)
    return len(batch.results)


@shared_task(name=SWEEP_STALLED_DELIVERIES, **DB_RETRY)
def sweep_stalled_deliveries() -> int:
    """Republish deliveries whose task never ran (broker down, worker lost), in batches."""
    settings = get_settings()
    ids = reschedule_stalled(db.session, settings)
    return publish_batches(ids, settings.DIGEST_BATCH_SIZE)


def publish_deliveries(delivery_ids: Iterable[int]) -> int:
    """Publish a send task per delivery; returns how many the broker took.

    Call only after the rows are committed. If the broker is down the rows stay
    queued and the sweep publishes them later, so the caller carries on.
    """
    task = _bound(send_delivery)
    published = 0
    for delivery_id in delivery_ids:
        if not _publish(task, (delivery_id,), f"delivery {delivery_id}"):
            break
        published += 1
    return published


def publish_batches(delivery_ids: Sequence[int], size: int) -> int:
    """Publish one batch task per ``size`` deliveries; returns how many deliveries the broker took."""
    task = _bound(send_delivery_batch)
    published = 0
    for start in range(0, len(delivery_ids), size):
        chunk = list(delivery_ids[start:start + size])
        if not _publish(task, (chunk,), f"a batch of {len(chunk)} deliveries"):
            break
        published += len(chunk)
    return published


def _bound(task):  # type: ignore[no-untyped-def]
    """The task as bound to this Flask app's Celery app, not Celery's process-wide default."""
    return current_app.extensions["celery"].tasks[task.name]


def _publish(task, args: tuple, what: str) -> bool:  # type: ignore[no-untyped-def]
    try:
        task.apply_async(args)
    except BrokerUnavailable as error:
        log.warning("broker unavailable, %s left for the sweep: %s", what, error)
        return False
    except Exception:
        # The rows are committed and the sweep will publish them; whatever went
        # wrong in the broker client must not turn stored work into an error.
        log.exception("publishing %s failed; left for the sweep", what)
        return False
    return True
