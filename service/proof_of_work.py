"""An optional proof-of-work for the subscription form, in the style of ALTCHA.

The server picks a secret number in ``[0, maxnumber]`` and publishes
``sha256(salt + str(number))`` with an HMAC of it. The browser finds the number
by brute force and sends it back; the server checks the HMAC, the hash and the
expiry, and accepts each challenge once. Bots pay CPU for every attempt while
the server pays two hashes; no third-party service sees the readers.

The payload format is ALTCHA's (base64 of a JSON object with ``algorithm``,
``challenge``, ``number``, ``salt`` and ``signature``), so its widget could be
used instead of ours.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import heapq
import hmac
import json
import math
import re
import secrets
import threading
import time
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

import redis

ALGORITHM = "SHA-256"
# Longer than any genuine payload (about 350 characters), short enough that
# decoding what a bot sends costs nothing.
MAX_PAYLOAD_LENGTH = 1024
# The HMAC key is derived from SECRET_KEY for this one purpose, so a challenge
# signature can never stand in for any other value the service signs.
_KEY_PURPOSE = b"newsletter.proof-of-work"
# The salt ends in "&" so the boundary between salt and number is unambiguous:
# otherwise "…?expires=1700000000" + "42" and "…?expires=170000000042" + "" hash
# alike, and a client could move digits into the expiry of a signed challenge.
_SALT = re.compile(r"[0-9a-f]{24}\?expires=(?P<expires>[0-9]{1,12})&")
_HEX_DIGEST = re.compile(r"[0-9a-f]{64}")
_FIELDS = ("algorithm", "challenge", "number", "salt", "signature")


class Failure(StrEnum):
    """Why a proof of work was refused."""

    MISSING = "missing"
    MALFORMED = "malformed"
    BAD_SIGNATURE = "bad signature"
    WRONG_NUMBER = "wrong number"
    EXPIRED = "expired"
    REPLAYED = "replayed"


class InvalidProofOfWork(Exception):
    """The submitted proof of work is not acceptable; ``reason`` says why."""

    def __init__(self, reason: Failure) -> None:
        super().__init__(f"invalid proof of work: {reason}")
        self.reason = reason


class UsedChallenges(Protocol):
    """Remembers challenges already spent, each for a limited time."""

    def claim(self, challenge: str, ttl_seconds: int, now: float) -> bool:
        """Record ``challenge`` as used for ``ttl_seconds``; False if it already was."""


class InMemoryUsedChallenges:
    """Used challenges in this process: right for one web process (the embedded mode).

    With several processes each keeps its own set, and a payload could be spent
    once per process; use :class:`RedisUsedChallenges` there.
    """

    def __init__(self) -> None:
        self._expiry: dict[str, float] = {}
        # Ordered by expiry so forgetting is cheap however many are stored.
        self._queue: list[tuple[float, str]] = []
        # The web server's threads may verify two payloads at once.
        self._lock = threading.Lock()

    def claim(self, challenge: str, ttl_seconds: int, now: float) -> bool:
        with self._lock:
            self._forget_expired(now)
            if challenge in self._expiry:
                return False
            expires_at = now + ttl_seconds
            self._expiry[challenge] = expires_at
            heapq.heappush(self._queue, (expires_at, challenge))
            return True

    def __len__(self) -> int:
        return len(self._expiry)

    def _forget_expired(self, now: float) -> None:
        while self._queue and self._queue[0][0] <= now:
            _, challenge = heapq.heappop(self._queue)
            self._expiry.pop(challenge, None)


class RedisUsedChallenges:
    """Used challenges in Redis, shared by every web process.

    ``SET NX EX`` records and checks in one atomic step, and Redis forgets the
    key when the challenge could no longer pass anyway. The TTL runs on Redis's
    clock, so ``now`` only matters to the caller's arithmetic.
    """

    def __init__(self, client: redis.Redis, prefix: str = "newsletter:pow-used:") -> None:
        self._client = client
        self._prefix = prefix

    def claim(self, challenge: str, ttl_seconds: int, now: float) -> bool:
        first = self._client.set(self._prefix + challenge, b"1", nx=True, ex=max(1, ttl_seconds))
        return bool(first)


def create_challenge(secret: str, max_number: int, ttl_seconds: int, now: float | None = None) -> dict:
    """A fresh signed challenge, as JSON for the browser, valid for ``ttl_seconds``."""
    if max_number < 1 or ttl_seconds < 1:
        raise ValueError("max_number and ttl_seconds must be positive")
    issued = time.time() if now is None else now
    salt = f"{secrets.token_hex(12)}?expires={int(issued) + ttl_seconds}&"
    number = secrets.randbelow(max_number + 1)
    challenge = _hash(salt, number)
    return {
        "algorithm": ALGORITHM,
        "challenge": challenge,
        "maxnumber": max_number,
        "salt": salt,
        "signature": _sign(secret, challenge),
    }


def verify_solution(payload_b64: str, secret: str, used: UsedChallenges, now: float | None = None) -> None:
    """Accept a solved challenge once, or raise :class:`InvalidProofOfWork`."""
    checked_at = time.time() if now is None else now
    if not payload_b64 or not payload_b64.strip():
        raise InvalidProofOfWork(Failure.MISSING)
    solution = _decode(payload_b64.strip())
    # Cheapest refusal first, and nothing signed by someone else gets further.
    if not hmac.compare_digest(solution.signature, _sign(secret, solution.challenge)):
        raise InvalidProofOfWork(Failure.BAD_SIGNATURE)
    if not hmac.compare_digest(_hash(solution.salt, solution.number), solution.challenge):
        raise InvalidProofOfWork(Failure.WRONG_NUMBER)
    if checked_at >= solution.expires:
        raise InvalidProofOfWork(Failure.EXPIRED)
    # Spent last, so refused attempts never fill the store. The record need not
    # outlive the expiry: after it the challenge fails as expired anyway.
    if not used.claim(solution.challenge, math.ceil(solution.expires - checked_at), checked_at):
        raise InvalidProofOfWork(Failure.REPLAYED)


def solve_challenge(challenge: dict) -> str:
    """Find the number by brute force, as the browser does, and return the payload."""
    salt, target = challenge["salt"], challenge["challenge"]
    for number in range(int(challenge["maxnumber"]) + 1):
        if _hash(salt, number) == target:
            return encode_payload({
                "algorithm": challenge["algorithm"],
                "challenge": target,
                "number": number,
                "salt": salt,
                "signature": challenge["signature"],
            })
    raise ValueError("the challenge has no solution up to its maxnumber")


def encode_payload(fields: dict[str, Any]) -> str:
    """The form field value for ``fields``: base64 of compact JSON, as browsers send it."""
    return base64.b64encode(json.dumps(fields, separators=(",", ":")).encode()).decode("ascii")


@dataclass(frozen=True)
class _Solution:
    challenge: str
    number: int
    salt: str
    signature: str
    expires: int


def _decode(payload_b64: str) -> _Solution:
    """The payload's fields, checked for shape; anything unexpected is MALFORMED."""
    if len(payload_b64) > MAX_PAYLOAD_LENGTH:
        raise InvalidProofOfWork(Failure.MALFORMED)
    try:
        payload = json.loads(base64.b64decode(payload_b64, validate=True))
    except (binascii.Error, ValueError):  # ValueError covers bad UTF-8 and bad JSON
        raise InvalidProofOfWork(Failure.MALFORMED) from None
    if not isinstance(payload, dict) or any(name not in payload for name in _FIELDS):
        raise InvalidProofOfWork(Failure.MALFORMED)
    number = payload["number"]
    # bool is an int to Python, and str(True) would hash as "True".
    if not isinstance(number, int) or isinstance(number, bool) or number < 0:
        raise InvalidProofOfWork(Failure.MALFORMED)
    if payload["algorithm"] != ALGORITHM:
        raise InvalidProofOfWork(Failure.MALFORMED)
    for name in ("challenge", "signature"):
        if not isinstance(payload[name], str) or not _HEX_DIGEST.fullmatch(payload[name]):
            raise InvalidProofOfWork(Failure.MALFORMED)
    salt = _SALT.fullmatch(payload["salt"]) if isinstance(payload["salt"], str) else None
    if salt is None:
        raise InvalidProofOfWork(Failure.MALFORMED)
    return _Solution(challenge=payload["challenge"], number=number, salt=payload["salt"],
                     signature=payload["signature"], expires=int(salt["expires"]))


def _hash(salt: str, number: int) -> str:
    return hashlib.sha256(f"{salt}{number}".encode()).hexdigest()


def _sign(secret: str, challenge: str) -> str:
    key = hmac.new(secret.encode(), _KEY_PURPOSE, hashlib.sha256).digest()
    return hmac.new(key, challenge.encode(), hashlib.sha256).hexdigest()
