"""Named admin API keys: several integrations, each with its own revocable key.

Only a SHA-256 hash of each key is stored; the key itself is shown once, when
it is created. The single ADMIN_API_TOKEN from the environment keeps working
alongside them.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.errors import InvalidInput, NotFound
from service.models import ApiKey, utcnow

KEY_PREFIX = "nlk_"


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def create_api_key(session: Session, name: str) -> tuple[ApiKey, str]:
    """Create a key named ``name``; returns the row and the key, which is not stored."""
    name = name.strip()
    if not name or len(name) > 100:
        raise InvalidInput({"name": "1 to 100 characters"})
    if session.scalars(select(ApiKey).where(ApiKey.name == name)).first() is not None:
        raise InvalidInput({"name": "a key with this name exists; revoke it or pick another name"})
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    row = ApiKey(name=name, key_hash=_hash(key))
    session.add(row)
    session.flush()
    return row, key


def revoke_api_key(session: Session, name: str) -> ApiKey:
    row = session.scalars(select(ApiKey).where(ApiKey.name == name)).first()
    if row is None:
        raise NotFound(f"no API key named {name!r}")
    row.revoked_at = row.revoked_at or utcnow()
    return row


def list_api_keys(session: Session) -> list[ApiKey]:
    return list(session.scalars(select(ApiKey).order_by(ApiKey.name)))


def is_valid_admin_key(session: Session, given: str, configured_token: str | None) -> bool:
    """True for the configured ADMIN_API_TOKEN or any key not revoked (compared in constant time)."""
    if not given:
        return False
    if configured_token and hmac.compare_digest(given.encode(), configured_token.encode()):
        return True
    if not given.startswith(KEY_PREFIX):
        return False
    # The lookup is by hash, so timing reveals nothing about the key.
    row = session.scalars(select(ApiKey).where(ApiKey.key_hash == _hash(given))).first()
    if row is None or row.revoked_at is not None:
        return False
    row.last_used_at = utcnow()
    session.commit()
    return True
