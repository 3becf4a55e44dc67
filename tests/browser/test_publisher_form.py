"""A reader's journey in a real browser, from a publisher's article to a confirmed subscription.

Chromium loads an article on the publisher's own site (another origin, another
server) carrying README's subscribe snippet, and posts it to the service running
as a real HTTP server. The real worker sends the confirmation to the SMTP
server; Chromium opens that email, follows its button and presses *Confirm*.
"""

import pytest
from playwright.sync_api import Page, expect
from sqlalchemy import select

from service.extensions import db
from service.models import ConsentRecord, Subscriber, SubscriberStatus, SubscriptionStatus
from tests.browser.conftest import PUBLISHER_ORIGIN, STRANGER_ORIGIN
from tests.conftest import PUBLIC_BASE_URL, wait_until

pytestmark = pytest.mark.integration
EMAIL = "peggy@example.com"
ARTICLE = "/movies/mi7-set"


def _subscriber() -> Subscriber | None:
    return db.session.scalars(select(Subscriber).where(Subscriber.email == EMAIL)).one_or_none()


def test_a_reader_subscribes_on_the_publishers_page_and_confirms_from_the_email(
        page: Page, live_service, smtp, worker):
    page.goto(PUBLISHER_ORIGIN + ARTICLE)
    expect(page.get_by_text("Expect a confirmation email if you subscribe.")).to_be_visible()
    expect(page.locator('input[name="website"]')).not_to_be_in_viewport()  # the honeypot: bots only
    page.get_by_label("Subscribe for Marvel News").fill(EMAIL)
    page.get_by_role("button", name="Subscribe").click()
    # The post crossed origins and came back to the publisher's thank-you page ('next').
    expect(page).to_have_url(f"{PUBLISHER_ORIGIN}/thanks-for-subscribing")
    expect(page.get_by_role("heading", name="Thanks for subscribing")).to_be_visible()

    [mail] = smtp.wait_for(EMAIL)
    page.set_content(mail.html)  # the reader opens the email...
    page.get_by_role("link", name="Yes, subscribe me").click()  # ...and presses its button
    expect(page).to_have_url(mail.link("confirm"))
    assert page.url.startswith(f"{PUBLIC_BASE_URL}/confirm/")
    with live_service.app_context():
        assert _subscriber().status == SubscriberStatus.PENDING  # opening the link changes nothing
    page.get_by_role("button", name="Confirm subscription").click()
    expect(page.get_by_role("heading", name="You're subscribed")).to_be_visible()
    expect(page.get_by_role("listitem")).to_have_text(["Marvel News"])

    with live_service.app_context():
        subscriber = wait_until(lambda: (s := _subscriber()) and s.status == SubscriberStatus.CONFIRMED and s,
                                message="the subscriber confirmed")
        [subscription] = subscriber.subscriptions
        assert subscription.status == SubscriptionStatus.CONFIRMED
        assert subscription.topic.slug == "marvel-news"
        consent = db.session.scalars(select(ConsentRecord)).one()
        assert consent.source == "form"
        assert consent.page_url.startswith(PUBLISHER_ORIGIN)  # the browser's Referer: the publisher's page
        assert consent.confirmed_at is not None


def test_the_same_snippet_on_a_site_the_service_does_not_list_is_refused(
        page: Page, live_service, smtp):
    page.goto(STRANGER_ORIGIN + ARTICLE)
    page.get_by_label("Subscribe for Marvel News").fill(EMAIL)
    page.get_by_role("button", name="Subscribe").click()
    expect(page).to_have_url(f"{PUBLIC_BASE_URL}/subscribe")
    expect(page.get_by_text("may only be posted from the publisher's own pages")).to_be_visible()
    with live_service.app_context():
        assert _subscriber() is None
    assert smtp.messages_to(EMAIL) == []
