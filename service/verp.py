"""VERP envelope senders: each message's bounce address names its delivery.

``bounces@news.example.com`` becomes ``bounces+d123-1a2b3c4d5e@news.example.com``
for delivery 123. The suffix is an HMAC of the id, so a forged bounce cannot
point at someone else's delivery. Any key in SECRET_KEY or its fallbacks
verifies, so rotating the key does not orphan bounces of mail already sent.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Sequence

from service.models import LARGEST_ID

# At most 10 digits: an id column holds no more, and int() refuses a string of over 4,300 digits.
_VERP = re.compile(r"^(?P<local>[^+@]+)\+d(?P<id>\d{1,10})-(?P<sig>[0-9a-f]{10})@(?P<domain>.+)$",
                   re.IGNORECASE)


def verp_address(bounce_address: str, delivery_id: int, secret_key: str) -> str:
    local, _, domain = bounce_address.partition("@")
    return f"{local}+d{delivery_id}-{_signature(delivery_id, secret_key)}@{domain}"


def looks_like_verp(address: str, bounce_address: str) -> bool:
    """Whether the address has the shape of a VERP address of ``bounce_address``
    (its local part and domain, with a +d<id>-<sig> suffix); the signature is not checked."""
    return _verp_match(address, bounce_address) is not None


def delivery_id_from_verp(address: str, bounce_address: str, secret_keys: Sequence[str]) -> int | None:
    """The delivery id a VERP address names, or None if it is not one of ours."""
    match = _verp_match(address, bounce_address)
    if match is None:
        return None
    delivery_id = int(match["id"])
    if delivery_id > LARGEST_ID:  # no delivery has it; the database would refuse the query
        return None
    signature = match["sig"].lower()
    if any(hmac.compare_digest(signature, _signature(delivery_id, key)) for key in secret_keys):
        return delivery_id
    return None


def _verp_match(address: str, bounce_address: str) -> re.Match[str] | None:
    match = _VERP.match(address.strip().strip("<>"))
    local, _, domain = bounce_address.partition("@")
    if match is None or match["local"].lower() != local.lower() or match["domain"].lower() != domain.lower():
        return None
    return match


def _signature(delivery_id: int, secret_key: str) -> str:
    digest = hmac.new(secret_key.encode(), f"verp:d{delivery_id}".encode(), hashlib.sha256)
    return digest.hexdigest()[:10]
