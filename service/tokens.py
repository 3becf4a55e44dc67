"""Signed tokens for the links in our emails, one salt per purpose.

A token carries ids, never the address. Confirm tokens also carry the
subscriber's ``token_epoch`` and expire; unsubscribe and preferences tokens
never expire, because RFC 8058 expects an unsubscribe link in an old email to
keep working.

Key rotation: the current SECRET_KEY signs; SECRET_KEY_FALLBACKS still verify.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field
from typing import Any

from flask import current_app
from itsdangerous import BadData, BadSignature, SignatureExpired
from itsdangerous.encoding import base64_decode, base64_encode

from service.models import LARGEST_ID
from service.token_serializer import TokenSerializer


class TokenPurpose(enum.StrEnum):
    CONFIRM = "confirm"
    UNSUBSCRIBE = "unsubscribe"
    PREFERENCES = "preferences"


class InvalidToken(Exception):
    """The token was tampered with, truncated, signed for another purpose or key."""


class ExpiredToken(InvalidToken):
    """The token is genuine but older than its purpose allows."""

    def __init__(self, claims: dict[str, Any]) -> None:
        super().__init__("token expired")
        self.claims = claims


@dataclass(frozen=True)
class TokenSigner:
    """Signs and reads tokens with the current key and verifies with older ones."""

    secret_key: str
    fallback_keys: tuple[str, ...] = ()
    # Building a serializer costs as much as signing with one; a digest signs two links per reader.
    _serializers: dict[TokenPurpose, TokenSerializer] = field(
        default_factory=dict, init=False, repr=False, compare=False)

    def _serializer(self, purpose: TokenPurpose) -> TokenSerializer:
        serializer = self._serializers.get(purpose)
        if serializer is None:
            # itsdangerous signs with the last key of the list and verifies with all.
            keys = [*reversed(self.fallback_keys), self.secret_key]
            serializer = TokenSerializer(keys, salt=f"newsletter.{purpose.value}")
            self._serializers[purpose] = serializer
        return serializer

    def sign(self, purpose: TokenPurpose, claims: dict[str, Any]) -> str:
        token = self._serializer(purpose).dumps(claims)
        return token if isinstance(token, str) else token.decode()

    def read(self, purpose: TokenPurpose, token: str, max_age: int | None = None) -> dict[str, Any]:
        """Return the claims, or raise InvalidToken / ExpiredToken."""
        _require_canonical_spelling(token)
        serializer = self._serializer(purpose)
        try:
            claims = serializer.loads(token, max_age=max_age)
        except SignatureExpired as expired:
            payload = serializer.load_payload(expired.payload) if expired.payload else {}
            raise ExpiredToken(payload if isinstance(payload, dict) else {}) from None
        except BadSignature:
            raise InvalidToken("bad signature") from None
        if not isinstance(claims, dict):
            raise InvalidToken("malformed claims")
        return claims


_TOKEN_SHAPE = re.compile(r"\.?[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")


def _require_canonical_spelling(token: str) -> None:
    """One token, one spelling.

    itsdangerous decodes the signature leniently (it drops characters outside
    base64 and ignores the spare bits of the last one), so an altered token
    could still verify. Claims cannot be forged that way, but a link that
    works under many spellings is not what we promise.
    """
    if not _TOKEN_SHAPE.fullmatch(token):
        raise InvalidToken("malformed token")
    signature = token.rsplit(".", 1)[1]
    try:
        if base64_encode(base64_decode(signature)).decode() != signature:
            raise InvalidToken("signature not in canonical form")
    except (ValueError, BadData):
        raise InvalidToken("malformed signature") from None


def signer() -> TokenSigner:
    """The application's signer (set up by create_app)."""
    return current_app.extensions["token_signer"]


def confirm_token(subscriber_id: int, token_epoch: int) -> str:
    return signer().sign(TokenPurpose.CONFIRM, {"sid": subscriber_id, "e": token_epoch})


def unsubscribe_token(subscriber_id: int) -> str:
    return signer().sign(TokenPurpose.UNSUBSCRIBE, {"sid": subscriber_id})


def preferences_token(subscriber_id: int) -> str:
    return signer().sign(TokenPurpose.PREFERENCES, {"sid": subscriber_id})


@dataclass(frozen=True)
class ConfirmClaim:
    subscriber_id: int
    token_epoch: int


def read_confirm_token(token: str) -> ConfirmClaim:
    """Verify a confirm link; raises ExpiredToken past CONFIRM_TOKEN_MAX_AGE."""
    max_age = current_app.config["CONFIRM_TOKEN_MAX_AGE"]
    claims = signer().read(TokenPurpose.CONFIRM, token, max_age=max_age)
    return ConfirmClaim(_int_claim(claims, "sid"), _int_claim(claims, "e"))


def read_subscriber_token(purpose: TokenPurpose, token: str) -> int:
    """Verify an unsubscribe or preferences link and return its subscriber id."""
    return _int_claim(signer().read(purpose, token), "sid")


def _int_claim(claims: dict[str, Any], key: str) -> int:
    value = claims.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidToken(f"claim {key!r} missing")
    if not 0 <= value <= LARGEST_ID:  # no row has it, and the database would refuse the query
        raise InvalidToken(f"claim {key!r} out of range")
    return value
