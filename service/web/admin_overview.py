"""GET /admin/overview: a read-only page of figures for operators, behind the admin token.

The admin API wants ``Authorization: Bearer``, which a browser cannot send from
a link or a bookmark. So this page also takes HTTP Basic (any user name, the
admin token or a named API key as the password) and answers 401 with a Basic
challenge, which makes the browser ask for it.
"""

from __future__ import annotations

from flask import Blueprint, make_response, render_template, request
from werkzeug.wrappers import Response

from service.api_keys import is_valid_admin_key
from service.config import get_settings
from service.extensions import db
from service.models import DeliveryState, SubscriptionStatus
from service.overview import build_overview
from service.web.errors import error_response

bp = Blueprint("admin_overview", __name__, url_prefix="/admin")

REALM = 'Basic realm="newsletter admin", charset="UTF-8"'


def given_admin_key() -> str:
    """The bearer token, or the password of HTTP Basic credentials ('' if neither)."""
    credentials = request.authorization  # None when missing or malformed
    if credentials is None:
        return ""
    if credentials.type == "bearer":
        return credentials.token or ""
    if credentials.type == "basic":
        return credentials.password or ""
    return ""


@bp.before_request
def require_admin_login():  # type: ignore[no-untyped-def]
    if is_valid_admin_key(db.session, given_admin_key(), get_settings().ADMIN_API_TOKEN):
        return None
    response = make_response(error_response(
        401, "Sign in with the admin token (or a key from 'newsletter api-keys create NAME') as the "
             "password; any user name will do."))
    response.headers["WWW-Authenticate"] = REALM
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.get("/overview")
def overview() -> Response:
    """Per topic: subscriptions by state and the confirmation rate; the last digest runs by
    delivery state, overall and per topic; confirmation emails; bounces of the last 30 days and
    the latest ones. Read-only. Takes the admin token as a bearer token or, for browsers, as the
    password of HTTP Basic (any user name).
    ---
    get:
      summary: The admin overview page
      tags: [Admin pages]
      responses:
        200: {description: The page., content: {text/html: {schema: Html}}}
        401:
          description: >-
            No valid admin token (as Bearer, or as the password of HTTP Basic); the Basic challenge
            makes browsers ask for it.
          headers: {WWW-Authenticate: {schema: {type: string, example: 'Basic realm="newsletter admin"'}}}
          content: {text/html: {schema: Html}, application/json: {schema: Error}}
    """
    page = render_template(
        "admin/overview.html", overview=build_overview(db.session),
        subscription_states=[state.value for state in SubscriptionStatus],
        delivery_states=[state.value for state in DeliveryState],
    )
    # Figures about readers: keep them out of shared caches and the browser's history cache.
    return Response(page, mimetype="text/html", headers={"Cache-Control": "no-store"})
