"""A reader's data: download it, or have it erased, from the preferences link; and the
same for operators through the admin API (GDPR articles 15, 17 and 20).

The preferences token is the reader's key here, exactly as on the preferences page.
"""

from __future__ import annotations

import json
from typing import Any

from flask import Blueprint, Response, jsonify, render_template, request
from werkzeug.exceptions import HTTPException

from service.config import get_settings
from service.digests import find_subscriber
from service.errors import InvalidInput, NotFound
from service.extensions import db
from service.models import Subscriber
from service.privacy import erase_subscriber, export_subscriber
from service.tokens import InvalidToken, TokenPurpose, read_subscriber_token
from service.web import admin_api, public
from service.web.admin_auth import require_admin
from service.web.csrf import check_csrf
from service.web.errors import error_response
from service.web.negotiation import wants_json

bp = Blueprint("privacy", __name__)
admin_bp = Blueprint("privacy_admin", __name__, url_prefix="/api/v1")
admin_bp.before_request(require_admin)

EXPORT_FILENAME = "my-newsletter-data.json"
GONE = "We hold no data for this address any more."

# The same answers as the preferences page and the rest of the admin API.
bp.register_error_handler(InvalidToken, public.invalid_token)
admin_bp.register_error_handler(InvalidInput, admin_api.invalid_input)
admin_bp.register_error_handler(NotFound, admin_api.not_found)
admin_bp.register_error_handler(HTTPException, admin_api.http_error)


@bp.errorhandler(NotFound)
def gone(error: NotFound):  # type: ignore[no-untyped-def]
    return error_response(404, GONE)


# ------------------------------------------------------------------ readers


@bp.get("/preferences/<token>/data")
def download_data(token: str) -> Response:
    """Everything we hold about the reader, as a JSON file to keep or take elsewhere.
    ---
    get:
      summary: Download the reader's data
      responses:
        200:
          description: A JSON download (Content-Disposition attachment).
          content: {application/json: {schema: SubscriberExport}}
        400: BadLink
        404: Gone
    """
    subscriber_id = read_subscriber_token(TokenPurpose.PREFERENCES, token)
    return _json_download(export_subscriber(db.session, subscriber_id))


@bp.get("/preferences/<token>/erase")
def erase_page(token: str) -> str:
    """Ask first: a link alone (which mail scanners fetch) never erases anything.
    ---
    get:
      summary: The erase-my-data page
      responses:
        200: {description: The page with its Erase button., content: {text/html: {schema: Html}}}
        400: BadLink
        404: Gone
    """
    subscriber = _subscriber_of(token)
    return render_template("erase_confirm.html", token=token, email=subscriber.email)


@bp.post("/preferences/<token>/erase")
def erase_post(token: str):  # type: ignore[no-untyped-def]
    """Erase the reader. Repeating it shows the same page: the data is gone either way.
    ---
    post:
      summary: Erase the reader's data
      parameters: [CsrfHeader]
      requestBody:
        content:
          application/x-www-form-urlencoded: {schema: CsrfForm}
          multipart/form-data: {schema: CsrfForm}
      responses:
        200:
          description: Erased; the address stays on the suppression list as a hash.
          content: {text/html: {schema: Html}, application/json: {schema: Erased}}
        400: BadLink
        413: FormTooLarge
    """
    request.max_content_length = get_settings().MAX_FORM_BYTES
    subscriber_id = read_subscriber_token(TokenPurpose.PREFERENCES, token)
    check_csrf(token)
    erase_subscriber(db.session, subscriber_id, via="preferences")
    db.session.commit()
    if wants_json():
        return jsonify({"status": "erased"})
    return render_template("erased.html")


def _subscriber_of(token: str) -> Subscriber:
    subscriber = db.session.get(Subscriber, read_subscriber_token(TokenPurpose.PREFERENCES, token))
    if subscriber is None:
        raise NotFound(GONE)
    return subscriber


def _json_download(data: dict[str, Any]) -> Response:
    body = json.dumps(data, indent=2, ensure_ascii=False) + "\n"
    return Response(body, mimetype="application/json", headers={
        "Content-Disposition": f'attachment; filename="{EXPORT_FILENAME}"',
        "Cache-Control": "no-store",  # personal data: no copies in shared caches
    })


# ------------------------------------------------------------------ operators


@admin_bp.get("/subscribers/export")
def admin_export() -> Response:
    """Everything held about one subscriber (?email= or ?subscriber_id=).
    ---
    get:
      summary: Export a subscriber's data
      parameters:
        - {name: email, in: query, schema: {type: string, format: email}}
        - {name: subscriber_id, in: query, schema: {type: integer}}
      responses:
        200: {description: A JSON download., content: {application/json: {schema: SubscriberExport}}}
        404: NotFound
        422: InvalidFields
    """
    raw_id = request.args.get("subscriber_id")
    subscriber_id = None
    if raw_id is not None:
        try:
            subscriber_id = int(raw_id)
        except ValueError:
            raise InvalidInput({"subscriber_id": "must be an integer"}) from None
    subscriber = _lookup(request.args.get("email") or None, subscriber_id)
    if subscriber is None:
        raise NotFound("no such subscriber")
    return _json_download(export_subscriber(db.session, subscriber.id))


@admin_bp.post("/subscribers/erase")
def admin_erase():  # type: ignore[no-untyped-def]
    """Erase one subscriber: JSON {"email": ...} or {"subscriber_id": ...}.
    ---
    post:
      summary: Erase a subscriber
      requestBody:
        required: true
        content: {application/json: {schema: EraseRequest}}
      responses:
        200: {description: Done., content: {application/json: {schema: EraseResult}}}
        413: TooLarge
        422: InvalidFields
    """
    body = request.get_json(silent=True) if request.is_json else None
    if not isinstance(body, dict):
        raise InvalidInput({"body": 'send a JSON object: {"email": ...} or {"subscriber_id": ...}'})
    unknown = set(body) - {"email", "subscriber_id"}
    if unknown:
        raise InvalidInput({name: "unknown field" for name in sorted(unknown)})
    email, subscriber_id = body.get("email"), body.get("subscriber_id")
    if email is not None and (not isinstance(email, str) or not email.strip()):
        raise InvalidInput({"email": "must be an email address"})
    if subscriber_id is not None and (not isinstance(subscriber_id, int) or isinstance(subscriber_id, bool)):
        raise InvalidInput({"subscriber_id": "must be an integer"})
    subscriber = _lookup(email, subscriber_id)
    erased = subscriber is not None and erase_subscriber(db.session, subscriber.id, via="admin-api")
    db.session.commit()
    return jsonify({"erased": erased})


def _lookup(email: str | None, subscriber_id: int | None) -> Subscriber | None:
    if email is None and subscriber_id is None:
        raise InvalidInput({"email": "give email or subscriber_id"})
    if email is not None and subscriber_id is not None:
        raise InvalidInput({"subscriber_id": "give email or subscriber_id, not both"})
    return find_subscriber(db.session, email=email, subscriber_id=subscriber_id)
