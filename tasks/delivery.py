"""Tasks that send ledger rows. They load, call service.deliveries and record."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence

from celery import shared_task
from flask import current_app
from kombu.exceptions import OperationalError as BrokerUnavailable
from sqlalchemy.exc import InterfaceError, OperationalError

from service.config import get_settings
from service.deliveries import BatchResult, RetryLater, deliver, deliver_many, reschedule_stalled
from service.extensions import db
from service.logs import logged_under
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
def send_delivery_batch(delivery_ids: list[int], request_ids: list[str | None] | None = None) -> int:
    """Send several deliveries over one SMTP connection; each temporary failure retries on its own.

    ``request_ids`` (one per delivery) come with form posts batched into one
    task, so that each delivery's outcome is logged under its own request's id.
    """
    settings = get_settings()
    transport = transport_for(settings, db.session)
    try:
        batch = deliver_many(db.session, delivery_ids, transport, settings)
    finally:
        transport.close()
    retry = _bound(send_delivery)
    for delivery_id, countdown in batch.retries:
        retry.apply_async((delivery_id,), countdown=countdown)
    if request_ids:
        _log_under_request_ids(batch, dict(zip(delivery_ids, request_ids, strict=False)))
    return len(batch.results)


def _log_under_request_ids(batch: BatchResult, request_ids: Mapping[int, str | None]) -> None:
    for result in batch.results:
        if request_id := request_ids.get(result.delivery_id):
            with logged_under(request_id):
                log.info("delivery %d: %s", result.delivery_id,
                         result.state.value if result.state else "not ours to send")


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


def publish_batches(delivery_ids: Sequence[int], size: int,
                    request_ids: Sequence[str | None] | None = None) -> int:
    """Publish one batch task per ``size`` deliveries; returns how many deliveries the broker took."""
    task = _bound(send_delivery_batch)
    published = 0
    for start in range(0, len(delivery_ids), size):
        chunk = list(delivery_ids[start:start + size])
        kwargs = {"request_ids": list(request_ids[start:start + size])} if request_ids else {}
        if not _publish(task, (chunk,), f"a batch of {len(chunk)} deliveries", kwargs):
            break
        published += len(chunk)
    return published


def _bound(task):  # type: ignore[no-untyped-def]
    """The task as bound to this Flask app's Celery app, not Celery's process-wide default."""
    return current_app.extensions["celery"].tasks[task.name]


def _publish(task, args: tuple, what: str,  # type: ignore[no-untyped-def]
             kwargs: Mapping[str, object] | None = None) -> bool:
    try:
        task.apply_async(args, kwargs)
    except BrokerUnavailable as error:
        log.warning("broker unavailable, %s left for the sweep: %s", what, error)
        return False
    except Exception:
        # The rows are committed and the sweep will publish them; whatever went
        # wrong in the broker client must not turn stored work into an error.
        log.exception("publishing %s failed; left for the sweep", what)
        return False
    return True
