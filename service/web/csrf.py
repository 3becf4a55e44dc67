"""CSRF tokens for our own forms (confirm, resend, preferences, erase).

Each of these pages sits at a URL that carries a signed token already. The
form's CSRF token is an HMAC of that URL token under our key: a page on
another site can neither read it from our page nor compute it, and no
session cookie is needed. POST /subscribe (cross-origin by design; origin
checked and rate-limited) and the RFC 8058 one-click unsubscribe (which the
RFC wants without one) are exempt.
"""

from __future__ import annotations

import hashlib
import hmac

from flask import Flask, request
from werkzeug.exceptions import BadRequest

from service.config import get_settings

FIELD = "csrf_token"


class CSRFError(BadRequest):
    for_readers = True
    description = "This form has expired or did not come from our page. Please reload it and try again."


def csrf_token(url_token: str) -> str:
    """The CSRF token of the form on the page at the URL carrying ``url_token``."""
    key = get_settings().SECRET_KEY.encode()
    return hmac.new(key, f"csrf:{url_token}".encode(), hashlib.sha256).hexdigest()[:32]


def check_csrf(url_token: str) -> None:
    """Raise CSRFError unless the post carries this page's token (form field or X-CSRF-Token)."""
    given = request.form.get(FIELD) or request.headers.get("X-CSRF-Token") or ""
    if not hmac.compare_digest(given.encode(), csrf_token(url_token).encode()):
        raise CSRFError()


def init_csrf(app: Flask) -> None:
    app.jinja_env.globals["csrf_token"] = csrf_token
