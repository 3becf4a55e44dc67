"""Refuse NUL characters anywhere in a request before any view sees them.

PostgreSQL text cannot hold NUL, so one in a query string, a path or a JSON
value would otherwise reach SQL and fail there. No person types one. JSON can
also carry a lone surrogate (the escape ``\\ud800``), which no database can
store as text (it is not UTF-8): refused alike.
"""

from __future__ import annotations

import re
from typing import Any

from flask import Flask, request

from service.web.errors import error_response

_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def cannot_store(text: str) -> bool:
    """Holds a NUL or a lone surrogate, which a text column cannot take."""
    return _UNSTORABLE.search(text) is not None


def _holds_unstorable(value: Any) -> bool:
    if isinstance(value, str):
        return cannot_store(value)
    if isinstance(value, dict):
        return any(_holds_unstorable(k) or _holds_unstorable(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_holds_unstorable(v) for v in value)
    return False


def guard_input(app: Flask) -> None:
    @app.before_request
    def refuse_unstorable():  # type: ignore[no-untyped-def]
        in_url = "\x00" in request.path or any(
            "\x00" in key or "\x00" in value for key, value in request.args.items(multi=True))
        # JSON of the admin API; the public forms refuse these field by field (web.forms), and
        # their tighter size limit must apply before anything reads the body.
        in_json = (request.path.startswith("/api/") and request.is_json
                   and _holds_unstorable(request.get_json(silent=True)))
        if not (in_url or in_json):
            return None
        return error_response(422 if in_json else 400,
                              "NUL characters and unpaired surrogates are not accepted.",
                              errors={"body" if in_json else "url": "contains a character we cannot store"})
