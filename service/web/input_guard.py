"""Refuse NUL characters anywhere in a request before any view sees them.

PostgreSQL text cannot hold NUL, so one in a query string, a path or a JSON
value would otherwise reach SQL and fail there. No person types one. JSON can
also carry a lone surrogate (the escape ``\\ud800``), which no database can
store as text (it is not UTF-8): refused alike.

JSON nested deeper than Python's parser can recurse (about a thousand levels
of ``[``) is malformed JSON here, a 400, where it would otherwise raise
RecursionError out of ``request.get_json`` and answer 500.
"""

from __future__ import annotations

import re
from typing import Any

from flask import Flask, request
from flask.json.provider import DefaultJSONProvider

from service.web.errors import error_response

_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def cannot_store(text: str) -> bool:
    """Holds a NUL or a lone surrogate, which a text column cannot take."""
    return _UNSTORABLE.search(text) is not None


def _holds_unstorable(value: Any) -> bool:
    # A walk with a list, not recursion: any depth the parser took must not overflow the stack here.
    waiting = [value]
    while waiting:
        item = waiting.pop()
        if isinstance(item, str):
            if cannot_store(item):
                return True
        elif isinstance(item, dict):
            waiting.extend(item.keys())
            waiting.extend(item.values())
        elif isinstance(item, list):
            waiting.extend(item)
    return False


class BoundedJSONProvider(DefaultJSONProvider):
    """Flask's JSON, with a body too deeply nested to parse counted as malformed."""

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        try:
            return super().loads(s, **kwargs)
        except RecursionError:
            # A ValueError is what Werkzeug turns into 400 (and get_json(silent=True) into None).
            raise ValueError("JSON nested too deeply") from None


def guard_input(app: Flask) -> None:
    app.json = BoundedJSONProvider(app)

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
