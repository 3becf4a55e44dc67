"""POST /api/v1/bounces: bounces and complaints handed over by the operator's MTA or ESP.

Needs ``Authorization: Bearer <token>`` with BOUNCE_WEBHOOK_TOKEN or
ADMIN_API_TOKEN; otherwise 401 and no data, and with neither configured the
webhook is closed. The body is a raw DSN or ARF message (``Content-Type:
message/rfc822``, optionally ``?recipient=`` with the envelope recipient it
was delivered to), or JSON from an ESP that parsed the bounce already. With
BOUNCE_ADDRESS set, a raw report counts only if it names a VERP address or a
Message-ID of ours; an ESP's JSON may name the reader's address alone.
"""

from __future__ import annotations

import hmac
from typing import Any

from flask import Blueprint, jsonify, request
from werkzeug.exceptions import HTTPException

from service.bounce_reports import NotABounce, reports_from_json
from service.bounces import IngestResult, ingest_message, record_reports
from service.config import get_settings
from service.errors import InvalidInput
from service.extensions import db

bp = Blueprint("bounce_webhook", __name__, url_prefix="/api/v1")
RAW_TYPES = ("message/rfc822",)


@bp.before_request
def require_webhook_token():  # type: ignore[no-untyped-def]
    settings = get_settings()
    accepted = [token for token in (settings.BOUNCE_WEBHOOK_TOKEN, settings.ADMIN_API_TOKEN) if token]
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    given_bytes = given.strip().encode()
    # Compare with every token, so the time taken does not tell which one came close.
    matches = [hmac.compare_digest(given_bytes, token.encode()) for token in accepted]
    if scheme.lower() == "bearer" and given_bytes and any(matches):
        return None
    message = "A valid bounce webhook token is required." if accepted else \
        "The bounce webhook is closed: set BOUNCE_WEBHOOK_TOKEN (or ADMIN_API_TOKEN) to open it."
    return (jsonify({"error": message}), 401,
            {"WWW-Authenticate": 'Bearer realm="newsletter bounce webhook"'})


@bp.errorhandler(NotABounce)
def not_a_bounce(error: NotABounce):  # type: ignore[no-untyped-def]
    return jsonify({"error": f"This is not a bounce or complaint report: {error}."}), 422


@bp.errorhandler(InvalidInput)
def invalid_input(error: InvalidInput):  # type: ignore[no-untyped-def]
    return jsonify({"error": "Some fields were refused.", "errors": error.errors}), 422


@bp.errorhandler(HTTPException)
def http_error(error: HTTPException):  # type: ignore[no-untyped-def]
    return jsonify({"error": error.description}), error.code or 500


@bp.post("/bounces")
def post_bounces():  # type: ignore[no-untyped-def]
    """Record a raw DSN/ARF message or ESP-parsed bounces; answers what was recorded.
    ---
    post:
      summary: Bounce and complaint webhook
      parameters:
        - name: recipient
          in: query
          description: The envelope recipient of a raw report (URL-encode + as %2B).
          schema: {type: string}
      requestBody:
        required: true
        content:
          message/rfc822: {schema: {type: string, description: A raw DSN (RFC 3464) or ARF report.}}
          application/json: {schema: BounceReports}
      responses:
        200: {description: What was recorded., content: {application/json: {schema: BounceResult}}}
        413: TooLarge
        415: {description: Neither message/rfc822 nor JSON., content: {application/json: {schema: Error}}}
        422: InvalidFields
    """
    settings = get_settings()
    if request.mimetype in RAW_TYPES:
        raw = request.get_data(cache=False)
        if not raw.strip():
            raise InvalidInput({"body": "send the raw report message"})
        # An address never holds a space, but a VERP address holds a '+', which a query
        # string not URL-encoded by the caller turns into one.
        recipient = request.args.get("recipient", "").strip().replace(" ", "+") or None
        result = ingest_message(db.session, settings, raw, envelope_recipient=recipient)
    elif request.is_json:
        body = request.get_json(silent=True)
        if body is None:
            raise InvalidInput({"body": "is not valid JSON"})
        result = record_reports(db.session, settings, reports_from_json(body))
    else:
        return jsonify({"error": "Send a raw report as message/rfc822, or JSON as application/json."}), 415
    db.session.commit()
    return jsonify(_result_json(result))


def _result_json(result: IngestResult) -> dict[str, Any]:
    """Ids, kinds and status codes only: the answer never repeats an address."""
    return {
        "reports": result.reports,
        "recorded": [{"bounce_id": b.id, "kind": b.kind.value, "status": b.status,
                      "delivery_id": b.delivery_id} for b in result.recorded],
        "unmatched": result.unmatched,
    }
