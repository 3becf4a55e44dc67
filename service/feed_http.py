"""Fetching a feed over HTTP: conditional GETs, size and time limits, http(s) only."""

from __future__ import annotations

import http.client
import logging
import time
from dataclasses import dataclass
from urllib.error import HTTPError, URLError
from urllib.parse import urlsplit
from urllib.request import HTTPRedirectHandler, Request, build_opener

log = logging.getLogger(__name__)

USER_AGENT = "newsletter-service/0.1 (feed poller)"
ACCEPT = ("application/rss+xml, application/atom+xml, application/xml;q=0.9, text/xml;q=0.9, "
          "*/*;q=0.5")
_READ_CHUNK = 64 * 1024


MAX_ERROR_CHARS = 500


class FeedFetchError(Exception):
    """The feed could not be fetched; the message is one line."""


@dataclass(frozen=True)
class FetchedFeed:
    """What one HTTP GET of a feed gave: a body, or "not modified"."""

    url: str
    body: bytes
    not_modified: bool
    etag: str | None
    last_modified: str | None
    content_type: str | None = None





class _HttpOnlyRedirects(HTTPRedirectHandler):
    """Follow redirects to http(s) only; urllib would also follow one to ftp://."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[no-untyped-def]
        if urlsplit(newurl).scheme.lower() not in ("http", "https"):
            raise HTTPError(newurl, code, "redirect to a non-http(s) URL refused", headers, fp)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def fetch_feed(url: str, etag: str | None, last_modified: str | None, *, timeout: float, max_bytes: int,
               user_agent: str = USER_AGENT) -> FetchedFeed:
    """GET a feed with conditional headers; a 304 gives ``not_modified``.

    Raises FeedFetchError (one line) for anything but http(s), network errors,
    HTTP errors, bodies over ``max_bytes`` and fetches that take over ``timeout``
    seconds in all.
    """
    if urlsplit(url).scheme.lower() not in ("http", "https"):
        raise FeedFetchError("only http and https feeds can be fetched")
    headers = {"User-Agent": user_agent, "Accept": ACCEPT, "Accept-Encoding": "identity"}
    if etag:
        headers["If-None-Match"] = etag
    if last_modified:
        headers["If-Modified-Since"] = last_modified
    deadline = time.monotonic() + timeout
    opener = build_opener(_HttpOnlyRedirects)
    try:
        with opener.open(Request(url, headers=headers), timeout=timeout) as response:
            body = _read_body(response, max_bytes, deadline, timeout)
            return FetchedFeed(
                url=response.geturl(), body=body, not_modified=False,
                etag=response.headers.get("ETag"), last_modified=response.headers.get("Last-Modified"),
                content_type=response.headers.get("Content-Type"),
            )
    except HTTPError as error:
        error.close()
        if error.code == 304:
            # A 304 may carry fresh validators; otherwise the stored ones stay good.
            return FetchedFeed(
                url=url, body=b"", not_modified=True,
                etag=error.headers.get("ETag") or etag,
                last_modified=error.headers.get("Last-Modified") or last_modified,
            )
        raise FeedFetchError(one_line(f"HTTP {error.code} {error.reason}")) from None
    except URLError as error:
        raise FeedFetchError(one_line(f"cannot fetch: {error.reason}")) from None
    except (OSError, http.client.HTTPException, ValueError) as error:
        # Timeouts, resets and malformed responses arrive as these, outside URLError.
        raise FeedFetchError(one_line(f"cannot fetch: {type(error).__name__}: {error}")) from None


def _read_body(response: http.client.HTTPResponse, max_bytes: int, deadline: float, timeout: float) -> bytes:
    encoding = (response.headers.get("Content-Encoding") or "identity").strip().lower()
    if encoding != "identity":
        raise FeedFetchError(f"unsupported Content-Encoding {encoding!r}")
    declared = response.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise FeedFetchError(f"feed is larger than {max_bytes} bytes (Content-Length {declared})")
    chunks: list[bytes] = []
    size = 0
    while True:
        # The socket timeout bounds each read; this bounds the whole body, so a
        # server dripping a byte at a time cannot hold the poller for ever.
        if time.monotonic() > deadline:
            raise FeedFetchError(f"fetching took longer than {timeout:g} seconds")
        # read1 returns what has arrived; read(n) would wait for all n bytes.
        chunk = response.read1(min(_READ_CHUNK, max_bytes + 1 - size))
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > max_bytes:
            raise FeedFetchError(f"feed is larger than {max_bytes} bytes")
        chunks.append(chunk)


def one_line(message: str) -> str:
    """A message fit for Feed.last_error and a log line: one line, bounded length."""
    flat = " ".join(message.split())
    return flat if len(flat) <= MAX_ERROR_CHARS else flat[: MAX_ERROR_CHARS - 1] + "…"
