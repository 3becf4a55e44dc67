"""Give each request an id (or keep the caller's X-Request-ID) and log with it.

The id is sent back only when the caller sent one: a fresh random header on
every answer would make two answers to POST /subscribe differ, and they must be
identical whatever the address.
"""

from __future__ import annotations

from flask import Flask, g, request
from werkzeug.wrappers import Response

from service.logs import new_request_id, request_id_var


def track_request_ids(app: Flask) -> None:
    @app.before_request
    def start() -> None:
        offered = request.headers.get("X-Request-ID")
        rid = new_request_id(offered)
        g.request_id_token = request_id_var.set(rid)
        g.request_id_echo = rid == offered

    @app.after_request
    def answer(response: Response) -> Response:
        rid = request_id_var.get()
        if rid and g.get("request_id_echo"):
            response.headers["X-Request-ID"] = rid
        return response

    @app.teardown_request
    def finish(exc: BaseException | None) -> None:
        token = g.pop("request_id_token", None)
        if token is not None:
            request_id_var.reset(token)
