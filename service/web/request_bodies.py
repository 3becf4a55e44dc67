"""Give a body sent without a Content-Length one before Flask sees it.

Every size check in the service compares a declared length with a limit: Flask's
MAX_CONTENT_LENGTH, a form's MAX_FORM_BYTES, the rate limits' refusal to read an
oversized form. A chunked HTTP/1.1 body, or an HTTP/2 one sent without the
header, declares none. When the server marks the stream as ending
(``wsgi.input_terminated``: granian does, gunicorn too since version 20),
Werkzeug reads such a body up to the app's limit and quietly drops the rest.
Read it here up to one byte past the app's limit instead, and pass on what was
read with its length: a body over the limit then declares more than the limit
and gets the same 413 as a sized one, and a smaller one is read as if sized.

A body cut off by its sender cannot be told from a complete one under granian,
which ends the stream where the bytes stop; the form's own checks then judge
what arrived. Werkzeug's development server raises instead, answered as
Werkzeug answers a disconnect (400). A client that sends slowly holds a thread
while it does, as it would for a sized body: run the service behind a proxy
that buffers request bodies.
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from typing import IO, Any

from werkzeug.exceptions import ClientDisconnected
from werkzeug.wsgi import get_content_length

WSGIApp = Any  # (environ, start_response) -> iterable of bytes
CHUNK = 64 * 1024
METHODS_WITH_BODIES = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class SizedBodies:
    """WSGI middleware: a body of unknown length is read (at most ``limit`` + 1 bytes) and given one."""

    def __init__(self, app: WSGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        # Only a stream the server ends may be read to its end: others would block here.
        if (environ["REQUEST_METHOD"] in METHODS_WITH_BODIES and environ.get("wsgi.input_terminated")
                and get_content_length(environ) is None):
            try:
                body = read_at_most(environ["wsgi.input"], self.limit + 1)
            except (OSError, ValueError):
                return ClientDisconnected()(environ, start_response)  # the client is gone
            environ["wsgi.input"] = body
            environ["CONTENT_LENGTH"] = str(body.getbuffer().nbytes)
            # Werkzeug disregards CONTENT_LENGTH while the body is said to be chunked.
            environ.pop("HTTP_TRANSFER_ENCODING", None)
        return self.app(environ, start_response)


def read_at_most(stream: IO[bytes], size: int) -> io.BytesIO:
    """Up to ``size`` bytes of ``stream``, fewer if it ends first, ready to be read from the start."""
    body = io.BytesIO()
    remaining = size
    while remaining > 0 and (part := stream.read(min(CHUNK, remaining))):
        body.write(part)
        remaining -= len(part)
    body.seek(0)
    return body
