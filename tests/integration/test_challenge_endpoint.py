"""The challenge endpoint on both stacks, and the Redis store of spent challenges."""

import base64
import json
import time

import pytest
import redis
from flask import Flask

from service.config import get_settings
from service.proof_of_work import (
    Failure,
    InMemoryUsedChallenges,
    InvalidProofOfWork,
    RedisUsedChallenges,
    create_challenge,
    solve_challenge,
    verify_solution,
)
from tests.conftest import TEST_REDIS_URL

PREFIX = "test:pow-used:"
SECRET = "proof-of-work-key-for-tests-0123"


@pytest.fixture
def challenge_app(stack) -> Flask:
    return stack.make_app()


@pytest.fixture
def used() -> RedisUsedChallenges:
    client = redis.Redis.from_url(TEST_REDIS_URL)
    stale = list(client.scan_iter(match=PREFIX + "*"))
    if stale:
        client.delete(*stale)
    return RedisUsedChallenges(client, prefix=PREFIX)


def _fetch(app: Flask):  # type: ignore[no-untyped-def]
    response = app.test_client().get("/subscribe/challenge")
    assert response.status_code == 200
    return response


def test_the_endpoint_issues_a_challenge_the_service_accepts_once(challenge_app):
    payload = solve_challenge(_fetch(challenge_app).get_json())
    with challenge_app.app_context():
        secret = get_settings().SECRET_KEY
    used = InMemoryUsedChallenges()
    verify_solution(payload, secret, used)
    with pytest.raises(InvalidProofOfWork) as replayed:
        verify_solution(payload, secret, used)
    assert replayed.value.reason == Failure.REPLAYED


def test_each_request_gets_a_fresh_challenge(challenge_app):
    first, second = _fetch(challenge_app).get_json(), _fetch(challenge_app).get_json()
    assert first["challenge"] != second["challenge"]
    assert first["salt"] != second["salt"]


def test_a_challenge_is_never_cached_and_any_page_may_fetch_it(challenge_app):
    response = _fetch(challenge_app)
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    assert response.mimetype == "application/json"


def test_the_challenge_follows_the_settings(stack):
    tuned = stack.make_app(POW_MAX_NUMBER="5000", POW_TTL_SECONDS="120")
    before = int(time.time())
    issued = _fetch(tuned).get_json()
    assert issued["maxnumber"] == 5000
    expires = int(issued["salt"].rsplit("?expires=", 1)[1].rstrip("&"))
    assert before + 120 <= expires <= int(time.time()) + 120


def test_a_challenge_from_the_endpoint_expires(challenge_app):
    issued = _fetch(challenge_app).get_json()
    payload = solve_challenge(issued)
    with challenge_app.app_context():
        secret, ttl = get_settings().SECRET_KEY, get_settings().POW_TTL_SECONDS
    with pytest.raises(InvalidProofOfWork) as expired:
        verify_solution(payload, secret, InMemoryUsedChallenges(), now=time.time() + ttl + 1)
    assert expired.value.reason == Failure.EXPIRED


def test_the_redis_store_accepts_a_challenge_once_for_every_process(used):
    other_process = RedisUsedChallenges(redis.Redis.from_url(TEST_REDIS_URL), prefix=PREFIX)
    now = time.time()
    assert used.claim("abc", 60, now)
    assert not used.claim("abc", 60, now)
    assert not other_process.claim("abc", 60, now)
    assert other_process.claim("def", 60, now)


def test_the_redis_store_lets_redis_forget_after_the_ttl(used):
    assert used.claim("abc", 60, time.time())
    ttl = redis.Redis.from_url(TEST_REDIS_URL).ttl(PREFIX + "abc")
    assert 0 < ttl <= 60


def test_a_payload_spent_through_redis_is_refused_as_replayed(used):
    now = time.time()
    payload = solve_challenge(create_challenge(SECRET, 1000, 600, now=now))
    verify_solution(payload, SECRET, used, now=now + 1)
    with pytest.raises(InvalidProofOfWork) as replayed:
        verify_solution(payload, SECRET, used, now=now + 2)
    assert replayed.value.reason == Failure.REPLAYED
    # Kept only as long as the challenge could still pass.
    assert 0 < redis.Redis.from_url(TEST_REDIS_URL).ttl(PREFIX + _challenge_of(payload)) <= 600


def _challenge_of(payload: str) -> str:
    return json.loads(base64.b64decode(payload))["challenge"]


def test_with_proof_of_work_required_the_form_needs_a_fresh_solution(stack, app):
    guarded = stack.make_app(POW_REQUIRED="true")
    client = guarded.test_client()
    form = {"email": "peggy@example.com", "topics": "marvel-news"}
    html = client.get("/subscribe").get_data(as_text=True)
    assert 'data-pow="/subscribe/challenge"' in html and "altcha.js" in html
    refused = client.post("/subscribe", data=form)
    assert refused.status_code == 422
    assert "human" in refused.get_data(as_text=True)
    payload = solve_challenge(client.get("/subscribe/challenge").get_json())
    assert client.post("/subscribe", data={**form, "altcha": payload}).status_code == 200
    replayed = client.post("/subscribe", json={**form, "topics": ["marvel-news"], "altcha": payload})
    assert replayed.status_code == 422
    assert "altcha" in replayed.json["errors"]
