"""Turn a ledger row into a finished message: who, which template, which links."""

from __future__ import annotations

from datetime import datetime
from email.utils import parseaddr

from service import links
from service.config import Settings
from service.mail.message import OutgoingMessage, make_message_id
from service.mail.rendering import render_email
from service.models import Delivery, Subscriber, SubscriptionStatus


def list_unsubscribe_headers(subscriber_id: int) -> list[tuple[str, str]]:
    """RFC 8058 one-click unsubscribe: one HTTPS URL in angle brackets, plus the POST hint."""
    return [
        ("List-Unsubscribe", f"<{links.unsubscribe_url(subscriber_id)}>"),
        ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"),
    ]


def compose_confirmation(
    delivery: Delivery, subscriber: Subscriber, settings: Settings, now: datetime
) -> OutgoingMessage:
    """The double opt-in email, listing the topics still waiting for confirmation."""
    pending = sorted(
        (s.topic for s in subscriber.subscriptions if s.status == SubscriptionStatus.PENDING),
        key=lambda topic: topic.name,
    )
    context = {
        "name": subscriber.name,
        "email": subscriber.email,
        "topics": pending,
        "confirm_url": links.confirm_url(subscriber.id, subscriber.token_epoch),
        "unsubscribe_url": links.unsubscribe_url(subscriber.id),
        "preferences_url": links.preferences_url(subscriber.id),
        "expires_in_days": max(1, settings.CONFIRM_TOKEN_MAX_AGE // 86400),
        "sender_name": _display_name(settings.MAIL_FROM),
    }
    rendered = render_email("confirmation", context)
    return OutgoingMessage(
        mail_from=settings.MAIL_FROM,
        to=subscriber.email,
        subject=rendered.subject,
        text=rendered.text,
        html=rendered.html,
        message_id=stable_message_id(delivery, settings.mail_domain),
        date=now,
        extra_headers=(
            *list_unsubscribe_headers(subscriber.id),
            ("Auto-Submitted", "auto-generated"),
        ),
    )


def stable_message_id(delivery: Delivery, domain: str) -> str:
    """The same Message-ID on every attempt, so a duplicate can be recognised."""
    stamp = f"{delivery.created_at:%Y%m%d%H%M%S}"
    return make_message_id(domain, f"{delivery.kind.value}.{delivery.id}.{stamp}")


def _display_name(mailbox: str) -> str:
    name, address = parseaddr(mailbox)
    return name or address
