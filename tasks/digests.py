"""Digest tasks: beat plans what is due; each planned batch is sent over one SMTP connection."""

from __future__ import annotations

import logging

from celery import shared_task

from service.config import get_settings
from service.digests import DigestFilter, plan_digests
from service.extensions import db
from service.models import Frequency
from tasks import PLAN_DUE_DIGESTS
from tasks.delivery import DB_RETRY, publish_batches

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


def plan_and_publish(force: bool, only: DigestFilter) -> int:
    """Plan batch by batch, publishing each batch's sending as soon as it is committed."""
    settings = get_settings()
    planned = 0
    for batch in plan_digests(db.session, settings, force=force, only=only):
        planned += len(batch.delivery_ids)
        publish_batches(batch.delivery_ids, settings.DIGEST_BATCH_SIZE)
    log.info("planned %d digests", planned)
    return planned
