"""Liveness and readiness for load balancers and orchestrators."""

from __future__ import annotations

import logging

from flask import Blueprint, current_app, jsonify
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from service.extensions import db

bp = Blueprint("health", __name__)
log = logging.getLogger(__name__)


@bp.get("/healthz")
def healthz():  # type: ignore[no-untyped-def]
    """The process is up; says nothing about its dependencies.
    ---
    get:
      summary: Liveness
      responses:
        200: {description: Up., content: {application/json: {schema: Health}}}
    """
    return jsonify({"status": "ok"})


@bp.get("/readyz")
def readyz():  # type: ignore[no-untyped-def]
    """The database and the broker answer.
    ---
    get:
      summary: Readiness
      responses:
        200: {description: Both answer., content: {application/json: {schema: Readiness}}}
        503: {description: One fails; checks names it., content: {application/json: {schema: Readiness}}}
    """
    checks = {"database": _database_ok(), "broker": _broker_ok()}
    ready = all(checks.values())
    body = {"status": "ready" if ready else "unavailable",
            "checks": {name: "ok" if ok else "failing" for name, ok in checks.items()}}
    return jsonify(body), 200 if ready else 503


def _database_ok() -> bool:
    try:
        db.session.execute(text("SELECT 1"))
    except SQLAlchemyError as error:
        log.warning("readiness: database unreachable: %s", error.__class__.__name__)
        db.session.rollback()
        return False
    return True


def _broker_ok() -> bool:
    celery_app = current_app.extensions["celery"]
    try:
        with celery_app.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, timeout=2)
    except Exception as error:  # kombu raises transport-specific errors here
        log.warning("readiness: broker unreachable: %s", error.__class__.__name__)
        return False
    return True
