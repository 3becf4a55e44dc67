"""Give a body sent without a Content-Length (HTTP/1.1 chunked) one before Flask sees it.

Every size check in the service compares a declared length with a limit: Flask's
MAX_CONTENT_LENGTH, a form's MAX_FORM_BYTES, the rate limits' refusal to read an
oversized form. A chunked body declares none. Werkzeug then reads it up to the
app's limit and quietly drops the rest when the server marks the stream as
ending (granian does), or reads nothing when it does not (gunicorn). Read here
up to one byte past the app's limit instead, and pass on what was read with its
length: a body over the limit then declares more than the limit and gets the
same 413 as a sized one, and a smaller one is read as if it had been sized.
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from typing import IO, Any

WSGIApp = Any  # (environ, start_response) -> iterable of bytes
CHUNK = 64 * 1024


class SizedBodies:
    """WSGI middleware: a chunked body is read (at most ``limit`` + 1 bytes) and given its length."""

    def __init__(self, app: WSGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        # A Content-Length beside it is disregarded (RFC 9112, 6.3), by Werkzeug too.
        if "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower():
            body = read_at_most(environ["wsgi.input"], self.limit + 1)
            environ["wsgi.input"] = io.BytesIO(body)
            environ["CONTENT_LENGTH"] = str(len(body))
            # Werkzeug disregards CONTENT_LENGTH while the body is said to be chunked.
            del environ["HTTP_TRANSFER_ENCODING"]
        return self.app(environ, start_response)


def read_at_most(stream: IO[bytes], size: int) -> bytes:
    """Up to ``size`` bytes, fewer if the body ends (or its sender goes away) first."""
    parts: list[bytes] = []
    remaining = size
    while remaining > 0:
        try:
            part = stream.read(min(CHUNK, remaining))
        except (OSError, ValueError):
            break  # the client went away; what came is all there is
        if not part:
            break
        parts.append(part)
        remaining -= len(part)
    return b"".join(parts)
