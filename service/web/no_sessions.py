"""No cookie sessions: nothing of ours keeps state in a browser between requests.

CSRF tokens are derived from the signed token in each page's URL (service.web.csrf)
and admins send a bearer token, so Flask's signed-cookie session is never used;
opening it still cost every request a serializer and a cookie lookup (3.6 % of a
web worker's CPU under the subscribe benchmark). Writing to ``flask.session`` now
fails loudly instead of setting a cookie nobody reads.
"""

from __future__ import annotations

from typing import NoReturn

from flask import Flask, Request
from flask.sessions import NullSession, SessionInterface
from werkzeug.wrappers import Response


class _NoSession(NullSession):
    def _fail(self, *args: object, **kwargs: object) -> NoReturn:
        raise RuntimeError("This service keeps no cookie sessions (service.web.no_sessions).")

    __setitem__ = __delitem__ = clear = pop = popitem = update = setdefault = _fail  # type: ignore[assignment]


class NoSessionInterface(SessionInterface):
    null_session_class = _NoSession

    def open_session(self, app: Flask, request: Request) -> NullSession:
        return self.make_null_session(app)

    def save_session(self, app: Flask, session: object, response: Response) -> None:
        return None
