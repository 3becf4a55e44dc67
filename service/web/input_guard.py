"""Refuse NUL characters anywhere in a request before any view sees them.

PostgreSQL text cannot hold NUL, so one in a query string, a path or a JSON
value would otherwise reach SQL and fail there. No person types one.
"""

from __future__ import annotations

from typing import Any

from flask import Flask, request

from service.web.errors import error_response


def _holds_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_holds_nul(k) or _holds_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_holds_nul(v) for v in value)
    return False


def guard_input(app: Flask) -> None:
    @app.before_request
    def refuse_nul():  # type: ignore[no-untyped-def]
        in_url = "\x00" in request.path or any(
            "\x00" in key or "\x00" in value for key, value in request.args.items(multi=True))
        # JSON of the admin API; the public forms refuse NUL field by field (web.forms), and
        # their tighter size limit must apply before anything reads the body.
        in_json = (request.path.startswith("/api/") and request.is_json
                   and _holds_nul(request.get_json(silent=True)))
        if in_url or in_json:
            return error_response(422 if in_json else 400, "NUL characters are not accepted.",
                                  errors={"body" if in_json else "url": "contains a NUL character"})
        return None
