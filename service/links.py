"""Absolute links for emails, built from PUBLIC_BASE_URL.

Emails are rendered in workers, outside any request, so links are joined onto
the configured public address rather than taken from the request's host.
"""

from __future__ import annotations

from service import tokens
from service.config import get_settings


def public_url(path: str) -> str:
    return f"{get_settings().PUBLIC_BASE_URL}{path}"


def confirm_url(subscriber_id: int, token_epoch: int) -> str:
    return public_url(f"/confirm/{tokens.confirm_token(subscriber_id, token_epoch)}")


def unsubscribe_url(subscriber_id: int) -> str:
    return public_url(f"/unsubscribe/{tokens.unsubscribe_token(subscriber_id)}")


def preferences_url(subscriber_id: int) -> str:
    return public_url(f"/preferences/{tokens.preferences_token(subscriber_id)}")
