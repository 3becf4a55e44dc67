"""The README's quickstart in a real browser: the confirmation read on the outbox page, its link clicked.

The outbox shows an email's HTML in a sandboxed frame, and the service's own
pages refuse to be framed, so a link followed inside the frame would show the
browser's "refused to connect" instead of the page. The links must open in a
tab of their own.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from flask import Flask
from playwright.sync_api import Page, expect
from sqlalchemy import select

from service.config import get_settings
from service.deliveries import deliver
from service.extensions import db
from service.mail.transport import OutboxTransport
from service.models import CapturedEmail, Delivery, DeliveryState, Subscriber, SubscriberStatus
from service.subscriptions import SubscriptionRequest, subscribe
from tests.browser.conftest import LiveServer
from tests.conftest import PUBLIC_BASE_URL, Stack, stop_shared_worker

pytestmark = pytest.mark.integration
EMAIL = "newcomer@example.com"


@pytest.fixture
def outbox_service(stack: Stack, app: Flask, live_server: LiveServer) -> Iterator[Flask]:
    """The service with no SMTP server configured, as the quickstart runs it: mail goes to /outbox."""
    stop_shared_worker(stack)  # this test sends the confirmation itself, to the outbox
    served = stack.make_app(SMTP_HOST="")
    with served.app_context():
        assert get_settings().uses_outbox
    live_server.app = served
    yield served
    live_server.app = None
    with served.app_context():
        db.engine.dispose()


def _confirmation_in_the_outbox(served: Flask) -> int:
    """Subscribe, and send the confirmation to the outbox as the worker would."""
    with served.app_context():
        outcome = subscribe(db.session, SubscriptionRequest(EMAIL, ["marvel-news"]), "weekly")
        db.session.commit()
        [delivery_id] = outcome.delivery_ids
        sent = deliver(db.session, delivery_id, OutboxTransport(db.session), get_settings())
        assert sent.state == DeliveryState.SENT
        message_id = db.session.get(Delivery, delivery_id).message_id
        return db.session.scalars(
            select(CapturedEmail.id).where(CapturedEmail.message_id == message_id)).one()


def _status(served: Flask) -> SubscriberStatus:
    with served.app_context():
        return db.session.scalars(select(Subscriber.status).where(Subscriber.email == EMAIL)).one()


def test_the_confirm_link_in_the_outbox_page_opens_the_confirm_page(page: Page, outbox_service: Flask):
    email_id = _confirmation_in_the_outbox(outbox_service)
    page.goto(f"{PUBLIC_BASE_URL}/outbox/{email_id}")
    with page.context.expect_page() as opened:
        page.frame_locator("iframe.preview").get_by_role("link", name="Yes, subscribe me").click()
    confirm_page = opened.value
    confirm_page.wait_for_load_state()
    assert confirm_page.url.startswith(f"{PUBLIC_BASE_URL}/confirm/")
    confirm_page.get_by_role("button", name="Confirm subscription").click()
    expect(confirm_page.get_by_role("heading", name="You're subscribed")).to_be_visible()
    assert _status(outbox_service) == SubscriberStatus.CONFIRMED
