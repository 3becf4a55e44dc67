"""The Celery application, wired to the Flask app as Flask's docs describe.

Tasks are ``shared_task``s in this package; :func:`celery_init_app` binds them
to a Celery app whose tasks run inside the Flask application context.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from celery import Celery, Task

if TYPE_CHECKING:
    from flask import Flask

    from service.config import Settings

SWEEP_STALLED_DELIVERIES = "newsletter.sweep_stalled_deliveries"
PLAN_DUE_DIGESTS = "newsletter.plan_due_digests"
POLL_FEEDS = "newsletter.poll_feeds"


def celery_init_app(app: Flask, settings: Settings) -> Celery:
    """Create the Celery app for ``app`` and store it in ``app.extensions['celery']``."""

    class FlaskTask(Task):
        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            with app.app_context():
                return self.run(*args, **kwargs)

    celery_app = Celery(app.name, task_cls=FlaskTask)
    celery_app.config_from_object(celery_settings(settings))
    celery_app.set_default()
    app.extensions["celery"] = celery_app
    return celery_app


def celery_settings(settings: Settings) -> dict[str, Any]:
    """Celery configuration derived from our settings."""
    broker = settings.CELERY_BROKER_URL
    transport_options: dict[str, Any] = {}
    if broker.startswith(("redis", "rediss")):
        # Longer than any retry countdown, so Redis never hands an ETA task to a
        # second worker while the first still holds it.
        transport_options["visibility_timeout"] = 2 * 3600
    return {
        "broker_url": broker,
        "broker_transport_options": transport_options,
        "broker_connection_retry_on_startup": True,
        "broker_connection_timeout": 3,
        "task_ignore_result": True,
        "result_backend": None,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "worker_hijack_root_logger": False,
        "task_publish_retry_policy": {
            "max_retries": 2, "interval_start": 0, "interval_step": 0.5, "interval_max": 1,
        },
        "include": ["tasks.delivery", "tasks.digests", "tasks.feeds"],
        "beat_schedule": {
            "sweep-stalled-deliveries": {
                "task": SWEEP_STALLED_DELIVERIES,
                "schedule": settings.DELIVERY_SWEEP_SECONDS,
            },
            "plan-due-digests": {
                "task": PLAN_DUE_DIGESTS,
                "schedule": settings.DIGEST_SCHEDULE_SECONDS,
            },
            "poll-feeds": {
                "task": POLL_FEEDS,
                "schedule": settings.FEED_POLL_SECONDS,
                # A run still queued when the next is due is dropped, not doubled.
                "options": {"expires": settings.FEED_POLL_SECONDS},
            },
        },
    }
