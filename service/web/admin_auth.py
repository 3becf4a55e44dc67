"""The admin check shared by every /api/v1 blueprint: a bearer token or a named API key."""

from __future__ import annotations

from flask import jsonify, request
from werkzeug.wrappers import Response

from service.api_keys import is_valid_admin_key
from service.config import get_settings
from service.extensions import db


def bearer_token() -> str:
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    return given.strip() if scheme.lower() == "bearer" else ""


def unauthorized(message: str) -> tuple[Response, int, dict[str, str]]:
    """401 with no data, and the challenge that tells clients to send a bearer token."""
    return jsonify({"error": message}), 401, {"WWW-Authenticate": 'Bearer realm="newsletter admin API"'}


def require_admin():  # type: ignore[no-untyped-def]
    """A ``before_request`` hook: None to go on, or the 401 answer."""
    if is_valid_admin_key(db.session, bearer_token(), get_settings().ADMIN_API_TOKEN):
        return None
    return unauthorized("A valid admin token is required: ADMIN_API_TOKEN, or a key from "
                        "'newsletter api-keys create NAME'.")
