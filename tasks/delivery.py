"""Tasks that send ledger rows. They load, call service.deliveries and record."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from celery import shared_task
from flask import current_app
from kombu.exceptions import OperationalError as BrokerUnavailable
from sqlalchemy.exc import InterfaceError, OperationalError

from service.config import get_settings
from service.deliveries import RetryLater, deliver, reschedule_stalled
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


@shared_task(name=SWEEP_STALLED_DELIVERIES, **DB_RETRY)
def sweep_stalled_deliveries() -> int:
    """Republish deliveries whose task never ran (broker down, worker lost)."""
    ids = reschedule_stalled(db.session, get_settings())
    return publish_deliveries(ids)


def publish_deliveries(delivery_ids: Iterable[int]) -> int:
    """Publish a send task per delivery; returns how many the broker took.

    Call only after the rows are committed. If the broker is down the rows stay
    queued and the sweep publishes them later, so the caller carries on.
    """
    # The task as bound to this Flask app's Celery app, not Celery's process-wide default.
    task = current_app.extensions["celery"].tasks[send_delivery.name]
    published = 0
    for delivery_id in delivery_ids:
        try:
            task.apply_async((delivery_id,))
        except BrokerUnavailable as error:
            log.warning("broker unavailable, delivery %s left for the sweep: %s", delivery_id, error)
            break
        except Exception:
            # The row is committed and the sweep will publish it; whatever went
            # wrong in the broker client must not turn a stored subscription into an error.
            log.exception("publishing delivery %s failed; left for the sweep", delivery_id)
            break
        published += 1
    return published
