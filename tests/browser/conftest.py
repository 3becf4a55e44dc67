"""Fixtures for tests that drive a real browser: Debian's Chromium through Playwright.

- ``browser``: headless Chromium from ``/usr/bin/chromium`` (never Playwright's own
  download). It resolves the service's host name (from ``PUBLIC_BASE_URL``, so the
  links in the mail the worker sends work as they are) and the publishers' host
  names to the local servers below, and every other name to nothing: the tests
  cannot reach the internet, and fail fast instead of waiting for DNS if they try;
- ``live_service``: the service as a real HTTP server (werkzeug) in a thread;
- ``publisher_site``: a publisher's article page carrying the README's subscribe
  snippet, on a server of its own, so its pages are a different origin (and site).

Without Chromium the tests skip; with ``REQUIRE_BROWSER=1`` (CI) they fail instead.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from flask import Flask
from playwright.sync_api import Browser, Page, Playwright, sync_playwright
from werkzeug.serving import BaseWSGIServer, make_server

from service.extensions import db
from tests.conftest import PROJECT_ROOT, PUBLIC_BASE_URL, Stack

CHROMIUM = Path("/usr/bin/chromium")
# As root, and with no way out to Google's update and sync services.
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
SERVICE_HOST = urlsplit(PUBLIC_BASE_URL).hostname
PUBLISHER_ORIGIN = "http://www.publisher.example"
STRANGER_ORIGIN = "http://www.stranger.example"  # the same pages, on an origin the service does not list
PUBLISHER_PAGES = Path(__file__).parent / "publisher"
SNIPPET_MARKER = "<!-- the subscribe snippet from README.md goes here -->"


# ---------------------------------------------------------------- the browser


@pytest.fixture(scope="session")
def chromium_path() -> str:
    """Debian's Chromium, or a skip (a failure when REQUIRE_BROWSER=1) naming what is missing."""
    if not CHROMIUM.is_file():
        reason = (f"the browser tests need Debian's Chromium at {CHROMIUM} "
                  f"(apt-get install chromium); it is not installed")
        if os.environ.get("REQUIRE_BROWSER") == "1":
            pytest.fail(f"{reason}, and REQUIRE_BROWSER=1 forbids skipping them", pytrace=False)
        pytest.skip(reason)
    return str(CHROMIUM)


@pytest.fixture(scope="session")
def playwright(chromium_path: str) -> Iterator[Playwright]:
    with sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="session")
def browser(playwright: Playwright, chromium_path: str, live_server: LiveServer,
            publisher_site: ThreadingHTTPServer) -> Iterator[Browser]:
    service_port = live_server.port
    publisher_port = publisher_site.server_address[1]
    rules = [f"MAP {SERVICE_HOST} 127.0.0.1:{service_port}",
             *(f"MAP {urlsplit(origin).hostname} 127.0.0.1:{publisher_port}"
               for origin in (PUBLISHER_ORIGIN, STRANGER_ORIGIN)),
             "MAP * ~NOTFOUND"]
    launched = playwright.chromium.launch(
        executable_path=chromium_path,
        args=[*CHROMIUM_ARGS, f"--host-resolver-rules={', '.join(rules)}"],
    )
    yield launched
    launched.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A tab in a fresh browser context (no cookies, cache or history), closed after the test."""
    context = browser.new_context()
    yield context.new_page()
    context.close()


# ---------------------------------------------------------------- the service, over HTTP


class LiveServer:
    """A real HTTP server (werkzeug, threaded) serving whichever app the current test hands it.

    It lives for the session, so the browser's host mapping can point at its port;
    each test puts its own stack's app behind it.
    """

    def __init__(self) -> None:
        self.app: Flask | None = None
        self.server: BaseWSGIServer = make_server("127.0.0.1", 0, self._dispatch, threaded=True)
        self.port = self.server.server_port
        self.thread = threading.Thread(target=self.server.serve_forever, name="live-server", daemon=True)

    def _dispatch(self, environ, start_response):  # type: ignore[no-untyped-def]
        if self.app is None:
            start_response("503 Service Unavailable", [("Content-Type", "text/plain")])
            return [b"no app behind the live server in this test"]
        return self.app(environ, start_response)


@pytest.fixture(scope="session")
def live_server() -> Iterator[LiveServer]:
    server = LiveServer()
    server.thread.start()
    yield server
    server.server.shutdown()
    server.server.server_close()


@pytest.fixture
def live_service(stack: Stack, app: Flask, live_server: LiveServer) -> Iterator[Flask]:
    """The stack's service at PUBLIC_BASE_URL over real HTTP, accepting posts from the publisher's origin."""
    served = stack.make_app(PUBLISHER_ORIGINS=PUBLISHER_ORIGIN)
    live_server.app = served
    yield served
    live_server.app = None
    with served.app_context():
        db.engine.dispose()


# ---------------------------------------------------------------- the publisher's site


def readme_snippet() -> str:
    """The HTML snippet README.md tells publishers to paste, aimed at the test servers."""
    readme = (PROJECT_ROOT / "README.md").read_text()
    section = readme.split("## Putting the form on your page", 1)[1]
    match = re.search(r"```html\n(.*?)```", section, re.S)
    assert match, "README.md's 'Putting the form on your page' has no ```html snippet"
    snippet = match.group(1)
    for documented in ("https://newsletter.example.com", "https://www.example.com"):
        assert documented in snippet, f"the README's snippet no longer mentions {documented}"
    return (snippet.replace("https://newsletter.example.com", PUBLIC_BASE_URL)
            .replace("https://www.example.com", PUBLISHER_ORIGIN))


class _PublisherPages(SimpleHTTPRequestHandler):
    """Pages from tests/browser/publisher/ by the URL's last segment, with the README's snippet inlined."""

    snippet = ""

    def do_GET(self) -> None:
        path = urlsplit(self.path).path.strip("/") or "index"
        page = PUBLISHER_PAGES / f"{Path(path).name}.html"
        if not page.is_file():
            self.send_error(404)
            return
        body = page.read_text().replace(SNIPPET_MARKER, self.snippet).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="session")
def publisher_site() -> Iterator[ThreadingHTTPServer]:
    """The publisher's pages: /movies/mi7-set (an article with the subscribe box), /thanks-for-subscribing."""
    pages = type("Pages", (_PublisherPages,), {"snippet": readme_snippet()})
    server = ThreadingHTTPServer(("127.0.0.1", 0), pages)
    thread = threading.Thread(target=server.serve_forever, name="publisher-site", daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
