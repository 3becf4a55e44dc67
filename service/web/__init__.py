"""Blueprints: the public pages and forms, health checks and the embedded outbox."""

from __future__ import annotations

from flask import Flask

from service.config import Settings
from service.web import (
    admin_api,
    admin_overview,
    bounce_webhook,
    challenge,
    errors,
    health,
    metrics,
    openapi,
    outbox,
    privacy,
    public,
)
from service.web.input_guard import guard_input
from service.web.no_sessions import NoSessionInterface
from service.web.request_ids import track_request_ids
from tasks.publisher import BackgroundPublisher


def register_web(app: Flask, settings: Settings) -> None:
    app.session_interface = NoSessionInterface()
    track_request_ids(app)
    # Form posts hand their confirmation sends to it (tasks/publisher.py).
    app.extensions["publisher"] = BackgroundPublisher(app)
    guard_input(app)
    app.register_blueprint(public.bp)
    app.register_blueprint(health.bp)
    app.register_blueprint(metrics.bp)
    app.register_blueprint(openapi.bp)
    app.register_blueprint(challenge.bp)
    app.register_blueprint(admin_api.bp)
    app.register_blueprint(bounce_webhook.bp)
    app.register_blueprint(privacy.bp)
    app.register_blueprint(privacy.admin_bp)
    app.register_blueprint(admin_overview.bp)
    if settings.uses_outbox:
        app.register_blueprint(outbox.bp)
    errors.register_error_handlers(app)
    app.context_processor(lambda: {"outbox_enabled": settings.uses_outbox})
