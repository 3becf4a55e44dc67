"""Headers that keep our pages and the tokens in their URLs safe in browsers."""

from __future__ import annotations

from flask import Flask, request
from werkzeug.wrappers import Response

# Our pages load only our own CSS and scripts (the proof-of-work solver runs in
# a worker made from a Blob). The outbox shows emails, whose
# inline styles need 'unsafe-inline' inside its sandboxed preview frames.
PAGE_POLICY = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
               "connect-src 'self'; worker-src blob:; frame-ancestors 'none'; "
               "form-action 'self' {form_action}; base-uri 'none'; object-src 'none'")
OUTBOX_POLICY = ("default-src 'self'; script-src 'none'; style-src 'self' 'unsafe-inline'; "
                 "img-src * data:; frame-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
                 "object-src 'none'")


def add_security_headers(app: Flask, publisher_origins: tuple[str, ...]) -> None:
    form_action = " ".join(publisher_origins)  # 'next' may send the reader back there

    @app.after_request
    def secure(response: Response) -> Response:
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        # Links carry tokens; never hand them to another site in a Referer.
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        if response.mimetype == "text/html":
            response.headers.setdefault("X-Frame-Options", "DENY")
            policy = OUTBOX_POLICY if request.path.startswith("/outbox") else \
                PAGE_POLICY.format(form_action=form_action).replace(" ;", ";")
            response.headers.setdefault("Content-Security-Policy", policy)
        return response
