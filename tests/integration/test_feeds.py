"""Feed polling against a real local HTTP server, on both stacks.

The publishers' web servers are a ``http.server`` on 127.0.0.1 that serves the
documents a test gives it and honours If-None-Match; nothing reaches the internet.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service.feed_commands import register_feed_commands
from service.feeds import add_feed, fetch_feed, poll_all_feeds, poll_feed
from service.models import Article, Feed, Tag
from service.topics import feed_tag, get_topic

TIMEOUT = 5.0
MAX_BYTES = 1_000_000


# ---------------------------------------------------------------- the publisher's server


@dataclass
class Document:
    body: bytes
    status: int = 200
    content_type: str = "application/rss+xml; charset=utf-8"
    etag: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    send_length: bool = True
    drip_seconds: float | None = None  # send one byte at a time, this far apart


class FeedServer:
    """Serves documents by path; records each request's headers."""

    def __init__(self) -> None:
        self.documents: dict[str, Document] = {}
        self.requests: list[tuple[str, dict[str, str]]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.requests.append((self.path, dict(self.headers.items())))
                document = server.documents.get(self.path)
                if document is None:
                    self.send_error(404)
                    return
                if document.etag and self.headers.get("If-None-Match") == document.etag:
                    self.send_response(304)
                    self.send_header("ETag", document.etag)
                    self.end_headers()
                    return
                self.send_response(document.status)
                self.send_header("Content-Type", document.content_type)
                if document.etag:
                    self.send_header("ETag", document.etag)
                for name, value in document.headers.items():
                    self.send_header(name, value)
                if document.send_length:
                    self.send_header("Content-Length", str(len(document.body)))
                self.end_headers()
                try:
                    if document.drip_seconds is None:
                        self.wfile.write(document.body)
                        return
                    for byte in document.body:
                        self.wfile.write(bytes([byte]))
                        self.wfile.flush()
                        time.sleep(document.drip_seconds)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the poller gave up, as it should

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def serve(self, path: str, body: str | bytes, **options: object) -> str:
        """Serve ``body`` at ``path``; returns its URL."""
        data = body.encode() if isinstance(body, str) else body
        self.documents[path] = Document(data, **options)  # type: ignore[arg-type]
        return self.url(path)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def requests_for(self, path: str) -> list[dict[str, str]]:
        return [headers for requested, headers in self.requests if requested == path]


@pytest.fixture
def feed_server() -> Iterator[FeedServer]:
    server = FeedServer()
    server.thread.start()
    yield server
    server.httpd.shutdown()
    server.httpd.server_close()


# ---------------------------------------------------------------- documents


def rss(*items: str) -> str:
    return f"""<?xml version="1.0" encoding="utf-8"?>
<rss version="2.0" xmlns:media="http://search.yahoo.com/mrss/" xmlns:dc="http://purl.org/dc/elements/1.1/">
<channel><title>Marvel Daily</title><link>https://news.example.com/</link><description>d</description>
{"".join(items)}
</channel></rss>"""


def rss_item(guid: str, title: str = "Title", link: str | None = None, extra: str = "") -> str:
    link = link if link is not None else f"https://news.example.com/{guid}"
    link_element = f"<link>{link}</link>" if link else ""
    title_element = f"<title>{title}</title>" if title else ""
    return f"<item>{title_element}{link_element}<guid isPermaLink=\"false\">{guid}</guid>{extra}</item>"


ATOM = """<?xml version="1.0" encoding="utf-8"?>
<feed xmlns="http://www.w3.org/2005/Atom">
  <title>Marvel Atom</title><id>urn:uuid:feed</id><updated>2026-11-20T10:00:00Z</updated>
  <entry>
    <id>urn:uuid:entry-1</id>
    <title type="html">&lt;em&gt;Thunderbolts&lt;/em&gt; reshoots</title>
    <link rel="alternate" href="https://news.example.com/thunderbolts?utm_medium=feed#top"/>
    <link rel="enclosure" type="image/png" href="https://img.example.com/thunderbolts.png"/>
    <published>2026-11-20T11:30:00+02:00</published>
    <updated>2026-11-21T08:00:00Z</updated>
    <author><name>Ann Writer</name></author>
    <summary type="html">&lt;p&gt;Florence Pugh &amp;amp; co.&lt;/p&gt;&lt;p&gt;More soon.&lt;/p&gt;</summary>
    <category term="Florence Pugh"/>
    <category term="MCU"/>
  </entry>
  <entry>
    <id>urn:uuid:entry-2</id>
    <title>Only updated</title>
    <link href="https://news.example.com/only-updated"/>
    <updated>2026-11-22T07:15:00Z</updated>
  </entry>
</feed>"""


def _article(session: Session, url: str) -> Article:
    session.rollback()
    return session.scalars(select(Article).where(Article.url == url)).one()


def _count_articles(session: Session) -> int:
    session.rollback()
    return session.scalar(select(func.count()).select_from(Article)) or 0


def _add(session: Session, url: str, topic_slug: str | None = None) -> int:
    feed = add_feed(session, url, topic_slug)
    session.commit()
    return feed.id


def _poll(session: Session, feed_id: int, **options: float) -> object:
    settings = {"timeout": TIMEOUT, "max_bytes": MAX_BYTES, **options}
    return poll_feed(session, feed_id, **settings)  # type: ignore[arg-type]


# ---------------------------------------------------------------- entries become articles


def test_rss_entries_become_articles_with_their_fields(session, feed_server):
    item = rss_item(
        "marvel-1",
        title="Robert Downey Jr. returns &amp; more",
        link="https://News.Example.com/rdj?utm_source=rss&amp;id=7",
        extra="""
        <description><![CDATA[<p>He is <b>back</b> &amp; ready.</p><script>track()</script>
          <p>Second.</p>]]></description>
        <dc:creator>Jane Reporter</dc:creator>
        <media:content url="https://img.example.com/rdj.jpg" medium="image"/>
        <pubDate>Tue, 25 Nov 2025 09:30:00 +0100</pubDate>""",
    )
    feed_id = _add(session, feed_server.serve("/feed.xml", rss(item)))

    result = _poll(session, feed_id)

    assert (result.new, result.updated, result.skipped, result.error) == (1, 0, 0, None)
    article = _article(session, "https://news.example.com/rdj?id=7")
    assert article.title == "Robert Downey Jr. returns & more"
    assert article.summary == "He is back & ready. Second."
    assert article.author == "Jane Reporter"
    assert article.image_url == "https://img.example.com/rdj.jpg"
    assert article.published_at == datetime(2025, 11, 25, 8, 30, tzinfo=UTC)
    assert article.external_id == f"feed:{feed_id}:marvel-1"
    assert article.feed_id == feed_id


def test_atom_entries_become_articles_with_their_fields(session, feed_server):
    feed_id = _add(session, feed_server.serve("/atom.xml", ATOM, content_type="application/atom+xml"))

    result = _poll(session, feed_id)

    assert (result.new, result.skipped, result.error) == (2, 0, None)
    article = _article(session, "https://news.example.com/thunderbolts")
    assert article.title == "Thunderbolts reshoots"
    assert article.summary == "Florence Pugh & co. More soon."
    assert article.author == "Ann Writer"
    assert article.image_url == "https://img.example.com/thunderbolts.png"
    assert article.published_at == datetime(2026, 11, 20, 9, 30, tzinfo=UTC)
    assert [tag.name for tag in article.tags] == ["florence pugh", "mcu"]
    only_updated = _article(session, "https://news.example.com/only-updated")
    assert only_updated.published_at == datetime(2026, 11, 22, 7, 15, tzinfo=UTC)


def test_entries_without_title_or_link_are_skipped_and_counted(session, feed_server):
    document = rss(
        rss_item("good"),
        rss_item("no-title", title=""),
        rss_item("no-link", link=""),
        rss_item("bad-link", link="ftp://news.example.com/file"),
    )
    feed_id = _add(session, feed_server.serve("/feed.xml", document))

    result = _poll(session, feed_id)

    assert (result.new, result.skipped, result.error) == (1, 3, None)
    assert _count_articles(session) == 1


def test_an_entry_without_a_date_is_dated_when_first_fetched_and_keeps_that_date(session, feed_server):
    feed_id = _add(session, feed_server.serve("/feed.xml", rss(rss_item("undated"))))
    before = datetime.now(UTC)

    _poll(session, feed_id)
    first_date = _article(session, "https://news.example.com/undated").published_at
    second = _poll(session, feed_id)

    assert before <= first_date <= datetime.now(UTC)
    assert second.unchanged == 1
    assert _article(session, "https://news.example.com/undated").published_at == first_date


# ---------------------------------------------------------------- tags and topics


def test_categories_become_normalised_tags(session, feed_server):
    categories = ("<category>Robert Downey Jr</category><category>robert downey jr</category>"
                  "<category> ROBERT  DOWNEY JR </category><category>Avengers</category>")
    feed_id = _add(session, feed_server.serve("/feed.xml", rss(rss_item("rdj", extra=categories))))

    _poll(session, feed_id)

    article = _article(session, "https://news.example.com/rdj")
    assert [tag.name for tag in article.tags] == ["avengers", "robert downey jr"]
    assert session.scalar(select(func.count()).select_from(Tag).where(Tag.name == "robert downey jr")) == 1


def test_a_topics_feed_tags_every_entry_with_the_topic_feed_tag(session, feed_server):
    document = rss(rss_item("one", extra="<category>Box Office</category>"), rss_item("two"))
    feed_id = _add(session, feed_server.serve("/feed.xml", document), topic_slug="marvel-news")

    result = _poll(session, feed_id)

    assert result.new == 2
    topic = get_topic(session, "marvel-news")
    tag = feed_tag(topic)
    assert tag in [t.name for t in topic.tags]  # so the entries belong to the topic
    for url in ("https://news.example.com/one", "https://news.example.com/two"):
        assert tag in [t.name for t in _article(session, url).tags]
    assert "box office" in [t.name for t in _article(session, "https://news.example.com/one").tags]


def test_adding_a_feed_twice_is_harmless(session, feed_server):
    url = feed_server.serve("/feed.xml", rss())

    first = _add(session, url)
    second = _add(session, url + "?utm_source=newsletter")

    assert first == second
    assert session.scalar(select(func.count()).select_from(Feed)) == 1


def test_adding_a_feed_to_an_unknown_topic_is_refused(session, feed_server):
    from service.errors import NotFound

    with pytest.raises(NotFound):
        add_feed(session, feed_server.serve("/feed.xml", rss()), "no-such-topic")


# ---------------------------------------------------------------- polling again


def test_polling_twice_creates_no_duplicates(session, feed_server):
    document = rss(rss_item("one"), rss_item("two"))
    feed_id = _add(session, feed_server.serve("/feed.xml", document))  # no ETag: a full fetch each time

    first = _poll(session, feed_id)
    second = _poll(session, feed_id)

    assert (first.new, first.unchanged) == (2, 0)
    assert (second.new, second.updated, second.unchanged, second.not_modified) == (0, 0, 2, False)
    assert _count_articles(session) == 2


def test_a_second_poll_with_an_etag_is_not_modified(session, feed_server):
    feed_id = _add(session, feed_server.serve("/feed.xml", rss(rss_item("one")), etag='"v1"'))

    _poll(session, feed_id)
    second = _poll(session, feed_id)

    assert second.not_modified
    assert (second.new, second.updated, second.error) == (0, 0, None)
    assert _count_articles(session) == 1
    first_request, second_request = feed_server.requests_for("/feed.xml")
    assert "If-None-Match" not in first_request
    assert second_request["If-None-Match"] == '"v1"'
    assert second_request["User-Agent"].startswith("newsletter-service")
    session.rollback()
    feed = session.get(Feed, feed_id)
    assert feed.etag == '"v1"'
    assert feed.last_polled_at is not None


def test_last_modified_is_sent_back_as_if_modified_since(session, feed_server):
    stamp = "Wed, 26 Nov 2025 10:00:00 GMT"
    feed_id = _add(session, feed_server.serve("/feed.xml", rss(), headers={"Last-Modified": stamp}))

    _poll(session, feed_id)
    _poll(session, feed_id)

    assert feed_server.requests_for("/feed.xml")[1]["If-Modified-Since"] == stamp


def test_an_entry_changed_in_the_feed_updates_its_article(session, feed_server):
    feed_id = _add(session, feed_server.serve("/feed.xml", rss(rss_item("story", title="First take"))))
    _poll(session, feed_id)

    feed_server.serve("/feed.xml", rss(rss_item(
        "story", title="Second take", extra="<description>Now with details.</description>",
    )))
    result = _poll(session, feed_id)

    assert (result.new, result.updated) == (0, 1)
    article = _article(session, "https://news.example.com/story")
    assert (article.title, article.summary) == ("Second take", "Now with details.")
    assert _count_articles(session) == 1


# ---------------------------------------------------------------- broken feeds


def _unused_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


BROKEN_FEEDS = {  # how to make it, and what its error says
    "not-xml": (lambda server: server.serve("/feed.xml", "this is <<< not a feed"),
                "not an RSS or Atom document"),
    "html-page": (lambda server: server.serve("/feed.xml", "<html><body>Hi</body></html>",
                                              content_type="text/html"),
                  "not an RSS or Atom document"),
    "server-error": (lambda server: server.serve("/feed.xml", rss(rss_item("one")), status=500),
                     "HTTP 500"),
    "not-found": (lambda server: server.url("/missing.xml"), "HTTP 404"),
    "oversized-declared": (lambda server: server.serve("/feed.xml", rss(rss_item("one")) + " " * MAX_BYTES),
                           f"larger than {MAX_BYTES} bytes"),
    "oversized-streamed": (lambda server: server.serve("/feed.xml", rss(rss_item("one")) + " " * MAX_BYTES,
                                                       send_length=False),
                           f"larger than {MAX_BYTES} bytes"),
    "unreachable": (lambda server: f"http://127.0.0.1:{_unused_port()}/feed.xml", "cannot fetch"),
    "redirect-to-ftp": (lambda server: server.serve("/feed.xml", "", status=302,
                                                    headers={"Location": "ftp://127.0.0.1/feed.xml"}),
                        "non-http(s)"),
}


@pytest.mark.parametrize("kind", BROKEN_FEEDS)
def test_a_broken_feed_stores_its_error_and_raises_nothing(session, feed_server, kind):
    make, expected = BROKEN_FEEDS[kind]
    feed_id = _add(session, make(feed_server))

    result = _poll(session, feed_id)

    assert expected in result.error
    assert "\n" not in result.error
    session.rollback()
    feed = session.get(Feed, feed_id)
    assert feed.last_error == result.error
    assert feed.last_polled_at is not None
    assert feed.etag is None
    assert _count_articles(session) == 0


def test_a_feed_that_drips_slower_than_the_timeout_is_abandoned(session, feed_server):
    url = feed_server.serve("/feed.xml", rss(rss_item("one")), drip_seconds=0.05)
    feed_id = _add(session, url)

    started = time.monotonic()
    result = _poll(session, feed_id, timeout=0.5)

    assert time.monotonic() - started < 3
    assert "longer than" in result.error
    assert _count_articles(session) == 0


def test_a_malformed_feed_keeps_what_it_can_read_and_records_the_problem(session, feed_server):
    # A bare "&" makes the XML ill-formed; feedparser still reads the items.
    document = rss(rss_item("one", title="Salt & pepper"), rss_item("two"))
    feed_id = _add(session, feed_server.serve("/feed.xml", document))

    result = _poll(session, feed_id)

    assert (result.new, result.error) == (2, None)
    assert "malformed" in result.warning
    session.rollback()
    assert session.get(Feed, feed_id).last_error == result.warning


def test_a_good_poll_clears_the_previous_error(session, feed_server):
    url = feed_server.serve("/feed.xml", "", status=503)
    feed_id = _add(session, url)
    assert _poll(session, feed_id).error

    feed_server.serve("/feed.xml", rss(rss_item("one")))
    result = _poll(session, feed_id)

    assert (result.new, result.error) == (1, None)
    session.rollback()
    assert session.get(Feed, feed_id).last_error is None


def test_only_http_and_https_feeds_are_fetched():
    from service.feeds import FeedFetchError

    with pytest.raises(FeedFetchError, match="only http and https"):
        fetch_feed("file:///etc/passwd", None, None, timeout=TIMEOUT, max_bytes=MAX_BYTES)


def test_a_broken_feed_does_not_stop_the_others(session, feed_server):
    broken = _add(session, feed_server.serve("/broken.xml", "", status=500))
    good = _add(session, feed_server.serve("/good.xml", rss(rss_item("one"))))
    seen = []

    results = poll_all_feeds(session, timeout=TIMEOUT, max_bytes=MAX_BYTES, progress=seen.append)

    assert [r.feed_id for r in results] == [broken, good]
    assert seen == results
    assert results[0].error and results[1].new == 1
    assert _count_articles(session) == 1


# ---------------------------------------------------------------- the command line


@pytest.fixture
def cli(app):
    if "feeds" not in app.cli.commands:
        register_feed_commands(app)
    return app.test_cli_runner()


def test_feeds_poll_prints_a_line_per_feed(session, feed_server, cli):
    good_url = feed_server.serve("/good.xml", rss(rss_item("one"), rss_item("two"), rss_item("x", title="")))
    broken_url = feed_server.serve("/broken.xml", "", status=500)
    _add(session, good_url)
    _add(session, broken_url)

    outcome = cli.invoke(args=["feeds", "poll", "--timeout", str(TIMEOUT), "--max-bytes", str(MAX_BYTES)])

    assert outcome.exit_code == 0, outcome.output
    lines = outcome.output.splitlines()
    assert f"{good_url}: 2 new, 0 updated, 0 unchanged, 1 skipped" in lines
    assert f"{broken_url}: error: HTTP 500 Internal Server Error" in lines
    assert lines[-1] == "polled 2 feeds: 2 new, 0 updated, 1 skipped, 1 failed"
    assert _count_articles(session) == 2


def test_feeds_add_registers_a_feed_for_a_topic(session, feed_server, cli):
    url = feed_server.serve("/feed.xml", rss())

    outcome = cli.invoke(args=["feeds", "add", url, "--topic", "marvel-news"])

    assert outcome.exit_code == 0, outcome.output
    session.rollback()
    feed = session.scalars(select(Feed)).one()
    assert (feed.url, feed.topic.slug) == (url, "marvel-news")
    assert outcome.output.strip() == f"feed {feed.id}: {url} for topic marvel-news"


def test_feeds_add_refuses_a_non_http_url(cli):
    outcome = cli.invoke(args=["feeds", "add", "ftp://example.com/feed.xml"])

    assert outcome.exit_code != 0
    assert "http(s)" in outcome.output
