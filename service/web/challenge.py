"""The proof-of-work challenge that the subscription form solves before it posts.

See :mod:`service.proof_of_work` for the scheme. Issuing a challenge stores
nothing: it is signed, so the post that spends it can be checked on its own.
"""

from __future__ import annotations

import redis
from flask import Blueprint, Flask, current_app, jsonify
from werkzeug.wrappers import Response

from service.config import Settings, get_settings
from service.proof_of_work import (
    InMemoryUsedChallenges,
    RedisUsedChallenges,
    UsedChallenges,
    create_challenge,
    verify_solution,
)

bp = Blueprint("challenge", __name__)
FIELD = "altcha"


def init_proof_of_work(app: Flask, settings: Settings) -> None:
    """One store of spent challenges per app: in Redis when there is one, so every web process shares it."""
    store: UsedChallenges
    if settings.LIMITER_STORAGE_URL.startswith(("redis://", "rediss://")):
        store = RedisUsedChallenges(redis.Redis.from_url(settings.LIMITER_STORAGE_URL), "newsletter:pow:")
    else:
        store = InMemoryUsedChallenges()
    app.extensions["used_challenges"] = store


def check_proof_of_work(payload: str) -> None:
    """Raise InvalidProofOfWork unless ``payload`` solves a fresh challenge of ours, once."""
    verify_solution(payload, get_settings().SECRET_KEY, current_app.extensions["used_challenges"])


@bp.get("/subscribe/challenge")
def issue_challenge() -> Response:
    """A fresh signed challenge as JSON, never cached: each one can be spent once.
    ---
    get:
      summary: A proof-of-work challenge for the form
      responses:
        200: {description: The challenge., content: {application/json: {schema: Challenge}}}
    """
    settings = get_settings()
    challenge = create_challenge(settings.SECRET_KEY, settings.POW_MAX_NUMBER, settings.POW_TTL_SECONDS)
    response = jsonify(challenge)
    response.headers["Cache-Control"] = "no-store"
    # Forms pasted on publishers' pages fetch this from their own origin. The
    # challenge is public and no cookies are sent, so any origin may read it.
    response.headers["Access-Control-Allow-Origin"] = "*"
    return response
