"""Digest tasks: beat plans what is due; batches are sent over one SMTP connection each."""

from __future__ import annotations

import logging

from celery import shared_task
from flask import current_app

from service.config import get_settings
from service.deliveries import deliver_many
from service.digests import DigestFilter, plan_digests
from service.extensions import db
from service.mail.transport import transport_for
from service.models import Frequency
from tasks import PLAN_DUE_DIGESTS
from tasks.delivery import DB_RETRY, send_delivery

log = logging.getLogger(__name__)


@shared_task(name=PLAN_DUE_DIGESTS, **DB_RETRY)
def plan_due_digests() -> int:
    """Beat's entry: plan the digests that are due now and queue their sending."""
    return plan_and_publish(force=False, only=DigestFilter())


@shared_task(name="newsletter.send_digests_now", **DB_RETRY)
def send_digests_now(frequency: str | None = None, topic_id: int | None = None) -> int:
    """Plan the current period for everyone (or a frequency/topic), whatever the hour."""
    only = DigestFilter(Frequency(frequency) if frequency else None, topic_id)
    return plan_and_publish(force=True, only=only)


@shared_task(bind=True, name="newsletter.send_digest_batch", **DB_RETRY)
def send_digest_batch(self, delivery_ids: list[int]) -> int:  # type: ignore[no-untyped-def]
    """Send a batch of planned digests; each temporary failure is retried on its own."""
    settings = get_settings()
    transport = transport_for(settings, db.session)
    try:
        batch = deliver_many(db.session, delivery_ids, transport, settings)
    finally:
        transport.close()
    retry = current_app.extensions["celery"].tasks[send_delivery.name]
    for delivery_id, countdown in batch.retries:
        retry.apply_async((delivery_id,), countdown=countdown)
    return len(batch.results)


def plan_and_publish(force: bool, only: DigestFilter) -> int:
    """Plan batch by batch, publishing each batch's sending as soon as it is committed."""
    planned = 0
    for batch in plan_digests(db.session, get_settings(), force=force, only=only):
        if batch.delivery_ids:
            planned += len(batch.delivery_ids)
            publish_batch(batch.delivery_ids)
    log.info("planned %d digests", planned)
    return planned


def publish_batch(delivery_ids: list[int]) -> None:
    """Queue one task for the batch; if the broker is down the sweep sends them one by one."""
    task = current_app.extensions["celery"].tasks[send_digest_batch.name]
    try:
        task.apply_async((delivery_ids,))
    except Exception:
        # Rows are committed as queued; the sweep publishes them later.
        log.exception("publishing a digest batch failed; left for the sweep")
        return


