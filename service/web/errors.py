"""Turn HTTP errors and token failures into a clear page or JSON, never a bare 500."""

from __future__ import annotations

import logging

from flask import Flask, Response, jsonify, render_template
from flask.globals import request_ctx
from sqlalchemy.exc import OperationalError
from werkzeug.exceptions import HTTPException, InternalServerError

from service.web.negotiation import wants_json

log = logging.getLogger(__name__)

_FRIENDLY = {
    400: "The request could not be understood.",
    404: "There is nothing at this address.",
    405: "This address does not accept that kind of request.",
    413: "The request is too large.",
    415: "Send the form as application/x-www-form-urlencoded, multipart/form-data or JSON.",
    429: "Too many requests. Please wait a moment and try again.",
    500: "Something went wrong on our side. Nothing you entered was lost; please try again.",
    503: "The service is temporarily unavailable. Please try again shortly.",
}


def error_response(status: int, message: str | None = None, **extra: object):  # type: ignore[no-untyped-def]
    message = message or _FRIENDLY.get(status, "The request failed.")
    if wants_json():
        return jsonify({"error": message, **extra}), status
    if request_ctx.url_adapter is None:
        # The Host header could not be routed (werkzeug's BadHost), so the page's links cannot be built.
        return Response(f"{message}\n", mimetype="text/plain"), status
    return render_template("error.html", status=status, message=message,
                           errors=extra.get("errors") or {}), status


RETRY_AFTER_SECONDS = 5
# SQLSTATE classes of a connection that is gone: 08 (connection exception), and the
# server shutting down or not yet accepting (admin_shutdown, crash_shutdown, cannot_connect_now).
_LOST_CONNECTION_STATES = ("08", "57P01", "57P02", "57P03")


def _connection_lost(error: OperationalError) -> bool:
    """The database went away or cannot be reached, as opposed to a query that failed."""
    if error.connection_invalidated:
        return True
    # psycopg gives no SQLSTATE to a connection it could not open (sqlite3 has no sqlstate at all).
    state = getattr(error.orig, "sqlstate", "")
    return state is None or (bool(state) and state.startswith(_LOST_CONNECTION_STATES))


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(OperationalError)
    def database_error(error: OperationalError):  # type: ignore[no-untyped-def]
        if not _connection_lost(error):
            log.error("database error", exc_info=error)
            return error_response(500)
        # A restart or a failover: "try again" rather than "something broke". The pool
        # reconnects by itself; a form post is safe to repeat.
        reason = str(error.orig or error).strip().splitlines()
        log.warning("database unavailable: %s", reason[0] if reason else error.__class__.__name__)
        response, status = error_response(503, retry_after=RETRY_AFTER_SECONDS)
        return response, status, {"Retry-After": str(RETRY_AFTER_SECONDS)}

    @app.errorhandler(HTTPException)
    def handle_http_error(error: HTTPException):  # type: ignore[no-untyped-def]
        status = error.code or 500
        # Our own HTTP errors carry a description meant for the reader; werkzeug's are generic.
        response = error_response(status, error.description if getattr(error, "for_readers", False) else None)
        if isinstance(error, InternalServerError):
            log.error("unhandled error", exc_info=error.original_exception)
        return response
