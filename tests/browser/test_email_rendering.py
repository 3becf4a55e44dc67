"""The emails as a reader sees them: the bytes that reached the SMTP server, opened in Chromium.

A reader subscribes and confirms, articles with photos come in through the API,
the real worker sends the confirmation and a digest, and each arrives at the
SMTP server. Their HTML parts are opened at a desktop and a phone width and
checked the way a person would look at them: the links go where they should,
the footer's preferences and unsubscribe links are there to see, the photos
load, the preheader stays hidden and nothing is wider than a phone's screen.
The screenshots go to the test's temporary folder; with UPDATE_SCREENSHOTS=1
(`make screenshots`) to docs/screenshots/ (shown in docs/emails.md) instead, so
a plain test run leaves the working tree alone.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Browser, Page, expect

from service.models import utcnow
from tests.browser.pictures import gradient_png
from tests.conftest import PROJECT_ROOT, PUBLIC_BASE_URL
from tests.forms import submit
from tests.smtp import ReceivedMessage

pytestmark = pytest.mark.integration
TOKEN = "admin-token-for-tests-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
EMAIL = "peggy@example.com"
SCREENSHOTS = PROJECT_ROOT / "docs" / "screenshots"
DEVICES = {
    "desktop": {"viewport": {"width": 1280, "height": 800}},
    "phone": {"viewport": {"width": 375, "height": 667}, "device_scale_factor": 2,
              "is_mobile": True, "has_touch": True},
}


@dataclass(frozen=True)
class Story:
    title: str
    url: str
    summary: str
    tags: tuple[str, ...]
    image_url: str | None = None


STORIES = [
    Story("See Tom Cruise and Marvel Star On Set For Mission Impossible 7",
          "https://www.example.com/movies/mi7-set",
          "Hayley Atwell gave fans a brief look behind the scenes of Tom Cruise filming the new Mission "
          "Impossible movie as they wait for the long-delayed production to finally wrap up. The seventh "
          "installment in the adventures of Tom Cruise's Ethan Hunt has seemingly been in production "
          "forever, thanks to the pandemic waylaying its production and release date several times.",
          ("Hayley Atwell", "Marvel"), "https://cdn.example.com/img/2026/mi7-set.png"),
    Story("Mission Impossible 7 Sends a Steam Train Off a Cliff in Derbyshire",
          "https://www.example.com/movies/mi7-train-stunt",
          "Locals in Derbyshire captured video of a black steam-powered train plummeting off a cliff in a "
          "fiery explosion, a stunt crew members had been building for months.",
          ("Mission Impossible", "Tom Cruise"), "https://cdn.example.com/img/2026/mi7-train.png"),
    Story("What If…? Brings Captain Carter Back for Season Two",
          "https://www.example.com/tv/what-if-season-two",
          "The franchise's first animated series returns, and Hayley Atwell's Captain Carter leads it.",
          ("What If",), "https://cdn.example.com/img/2026/what-if.png"),
    Story("Robert Downey Jr. Talks About Life After Iron Man",
          "https://www.example.com/movies/rdj-interview",
          "No photo with this one: the digest has to look right without it too.",
          ("Robert Downey Jr",)),
]
PICTURES = {
    "https://cdn.example.com/img/2026/mi7-set.png": gradient_png(1200, 675, (200, 16, 46), (24, 24, 27)),
    "https://cdn.example.com/img/2026/mi7-train.png": gradient_png(1200, 675, (90, 110, 130), (20, 20, 20)),
    "https://cdn.example.com/img/2026/what-if.png": gradient_png(800, 450, (40, 80, 160), (230, 180, 60)),
}


@pytest.fixture
def api(stack, app):
    admin_app = stack.make_app(ADMIN_API_TOKEN=TOKEN)
    with admin_app.app_context():
        yield admin_app.test_client()


def _mail_that_arrived(client, api, smtp) -> tuple[ReceivedMessage, ReceivedMessage]:
    """The confirmation and the first digest, as they reached the SMTP server."""
    client.post("/subscribe", data={"email": EMAIL, "name": "Peggy", "frequency": "daily",
                                    "topics": ["marvel-news", "movie-news", "tv-news"]})
    [confirmation] = smtp.wait_for(EMAIL)
    assert submit(client, urlsplit(confirmation.link("confirm")).path).status_code == 200
    published = utcnow().isoformat()
    articles = [{"title": s.title, "url": s.url, "summary": s.summary, "tags": list(s.tags),
                 "image_url": s.image_url, "author": "Tyler Pisapia", "published_at": published}
                for s in STORIES]
    assert api.post("/api/v1/articles", json={"articles": articles}, headers=AUTH).status_code == 201
    assert api.post("/api/v1/digests/send", headers=AUTH).status_code == 202
    digest = smtp.wait_for(EMAIL, count=2)[1]
    return confirmation, digest


def _open(browser: Browser, html: str, device: str) -> tuple[Page, list[str]]:
    """The email in a fresh browser tab; photos come from PICTURES, nothing else from anywhere."""
    context = browser.new_context(**DEVICES[device])
    requested: list[str] = []
    context.on("request", lambda request: requested.append(request.url))

    def cdn(route):  # type: ignore[no-untyped-def]
        picture = PICTURES.get(route.request.url)
        if picture is None:
            route.fulfill(status=404)
        else:
            route.fulfill(status=200, content_type="image/png", body=picture)

    context.route("https://cdn.example.com/**", cdn)
    page = context.new_page()
    page.set_content(html, wait_until="load")
    return page, requested


def _links(page: Page) -> list[tuple[str, str]]:
    return page.eval_on_selector_all(
        "a", "links => links.map(a => [a.innerText.trim(), a.getAttribute('href')])")


def _check_reads_well(page: Page, device: str, mail: ReceivedMessage) -> None:
    """What a reader on this device notices first: a hidden preheader, a footer to see, no sideways scroll."""
    width = DEVICES[device]["viewport"]["width"]
    expect(page.locator(".preheader")).to_be_hidden()
    unsubscribe_url = mail.message["List-Unsubscribe"].strip("<>")
    for name, href in (("Preferences", mail.link("preferences")), ("Unsubscribe", unsubscribe_url)):
        link = page.get_by_role("link", name=name, exact=True)
        expect(link).to_be_visible()
        expect(link).to_have_attribute("href", href)
        box = link.bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= width, (name, box)
        font_size = link.evaluate("a => parseFloat(getComputedStyle(a).fontSize)")
        assert font_size >= 12, f"{name} is set in {font_size}px"
    if device == "phone":  # narrow margins: the phone's few pixels go to the text
        column = page.get_by_role("heading", level=1).bounding_box()
        assert column is not None and column["width"] >= width - 2 * 16, f"a {column} text column"
    overflow = page.evaluate("[document.documentElement.scrollWidth, document.body.scrollWidth]")
    assert max(overflow) <= width, f"{device}: the email is {max(overflow)}px wide in a {width}px window"


@pytest.fixture
def screenshots(tmp_path: Path, stack) -> Path:
    # The docs show the PostgreSQL stack's run; the same mail goes out on both.
    if os.environ.get("UPDATE_SCREENSHOTS") == "1" and stack.name == "postgres":
        return SCREENSHOTS
    return tmp_path


def _screenshot(page: Page, folder: Path, name: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=folder / f"{name}.png", full_page=True)


def test_the_confirmation_and_the_digest_read_well_on_desktop_and_phone(
        browser: Browser, client, api, smtp, worker, screenshots):
    confirmation, digest = _mail_that_arrived(client, api, smtp)
    confirm_url = confirmation.link("confirm")
    assert confirm_url.startswith(f"{PUBLIC_BASE_URL}/confirm/")

    for device in DEVICES:
        page, requested = _open(browser, confirmation.html, device)
        expect(page.get_by_role("heading", name="Confirm your subscription")).to_be_visible()
        expect(page.get_by_text("Hi Peggy,")).to_be_visible()
        button = page.get_by_role("link", name="Yes, subscribe me")
        expect(button).to_be_visible()
        expect(button).to_have_attribute("href", confirm_url)
        expect(page.get_by_role("listitem")).to_have_text(["Marvel News", "Movie News", "TV News"])
        # The copy-paste fallback shows the very link the button opens.
        expect(page.get_by_role("link", name=confirm_url, exact=True)).to_have_attribute("href", confirm_url)
        assert {href for _, href in _links(page)} == {
            confirm_url, confirmation.link("preferences"), confirmation.link("unsubscribe")}
        _check_reads_well(page, device, confirmation)
        assert requested == []  # no tracking pixel, no web font: the email loads nothing
        _screenshot(page, screenshots, f"confirmation-{device}")
        page.context.close()

    for device in DEVICES:
        page, requested = _open(browser, digest.html, device)
        width = DEVICES[device]["viewport"]["width"]
        for heading in ("MARVEL NEWS", "Movie News", "TV News"):
            expect(page.get_by_role("heading", name=heading, exact=True)).to_be_visible()
        for story in STORIES:
            title = page.get_by_role("link", name=story.title, exact=True)
            expect(title).to_be_visible()
            expect(title).to_have_attribute("href", story.url)
            expect(page.get_by_text(story.summary[:60])).to_be_visible()
            photos = page.locator(f'a[href="{story.url}"] img')
            if story.image_url is None:
                expect(photos).to_have_count(0)
                continue
            expect(photos).to_have_count(1)
            expect(photos).to_have_attribute("src", story.image_url)
            loaded = photos.evaluate(
                "img => [img.complete, img.naturalWidth, img.getBoundingClientRect().width]")
            assert loaded[0] and loaded[1] > 0, f"{story.image_url} did not load"
            assert 0 < loaded[2] <= width
        footer_links = {digest.link("preferences"), digest.link("unsubscribe")}
        assert {href for _, href in _links(page)} - footer_links == {story.url for story in STORIES}
        _check_reads_well(page, device, digest)
        assert sorted(requested) == sorted(PICTURES)  # the photos, and nothing else
        _screenshot(page, screenshots, f"digest-{device}")
        page.context.close()
