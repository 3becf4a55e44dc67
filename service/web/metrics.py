"""GET /metrics in Prometheus' text format (behind the admin token when METRICS_TOKEN is unset)."""

from __future__ import annotations

import hmac

from flask import Blueprint, Response, current_app
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import CollectorRegistry

from service.config import get_settings
from service.extensions import db
from service.mail.timing import shared_smtp_totals
from service.metrics import LedgerCollector, SmtpCollector
from service.web.admin_auth import bearer_token, require_admin, unauthorized

bp = Blueprint("metrics", __name__)


@bp.before_request
def require_scraper():  # type: ignore[no-untyped-def]
    token = get_settings().METRICS_TOKEN
    if token is None:
        return require_admin()
    if hmac.compare_digest(bearer_token().encode(), token.encode()):
        return None
    return unauthorized("A valid metrics token is required.")


@bp.get("/metrics")
def metrics() -> Response:
    """Prometheus metrics, counted from the database at scrape time, and SMTP figures from the workers.
    ---
    get:
      summary: Prometheus metrics
      description: Bearer METRICS_TOKEN, or the admin token when METRICS_TOKEN is unset.
      security: [{adminToken: []}]
      responses:
        200: {description: Prometheus text format., content: {text/plain: {schema: {type: string}}}}
        401: {description: No valid token., content: {application/json: {schema: Error}}}
    """
    registry = CollectorRegistry(auto_describe=False)
    registry.register(LedgerCollector(lambda: db.session, _queue_depth))
    if not get_settings().uses_outbox:  # the outbox sends nothing over SMTP
        registry.register(SmtpCollector(lambda: shared_smtp_totals(get_settings())))
    return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)


def _queue_depth() -> int | None:
    """Messages waiting in the default Celery queue (Redis brokers; None elsewhere)."""
    celery_app = current_app.extensions["celery"]
    if not celery_app.conf.broker_url.startswith(("redis://", "rediss://")):
        return None
    try:
        with celery_app.connection_for_read() as connection:
            return connection.default_channel.client.llen(celery_app.conf.task_default_queue)
    except Exception:  # a broker that is down must not take the metrics page with it
        return None
