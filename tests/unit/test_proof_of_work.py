"""The proof-of-work scheme without HTTP: issue, solve, verify, refuse."""

import base64
import json

import pytest

from service.proof_of_work import (
    Failure,
    InMemoryUsedChallenges,
    InvalidProofOfWork,
    create_challenge,
    encode_payload,
    solve_challenge,
    verify_solution,
)

SECRET = "proof-of-work-key-for-tests-0123"
NOW = 1_700_000_000.0
TTL = 600
# Small enough that the Python solver answers at once; the scheme is the same.
MAX_NUMBER = 1000


def _challenge(now: float = NOW, secret: str = SECRET) -> dict:
    return create_challenge(secret, MAX_NUMBER, TTL, now=now)


def _fields(payload: str) -> dict:
    return json.loads(base64.b64decode(payload))


def _refusal(payload: str, used=None, now: float = NOW + 1) -> Failure:
    with pytest.raises(InvalidProofOfWork) as refused:
        verify_solution(payload, SECRET, used if used is not None else InMemoryUsedChallenges(), now=now)
    return refused.value.reason


def test_a_solved_challenge_is_accepted():
    verify_solution(solve_challenge(_challenge()), SECRET, InMemoryUsedChallenges(), now=NOW + 1)


def test_a_challenge_has_the_altcha_fields_and_an_expiry_in_its_salt():
    challenge = _challenge()
    assert set(challenge) == {"algorithm", "challenge", "maxnumber", "salt", "signature"}
    assert challenge["algorithm"] == "SHA-256"
    assert challenge["maxnumber"] == MAX_NUMBER
    assert challenge["salt"].endswith(f"?expires={int(NOW) + TTL}&")
    assert "number" not in challenge  # the answer is the secret


def test_every_challenge_is_different():
    assert _challenge()["challenge"] != _challenge()["challenge"]


def test_the_payload_carries_the_number_that_hashes_to_the_challenge():
    challenge = _challenge()
    fields = _fields(solve_challenge(challenge))
    assert set(fields) == {"algorithm", "challenge", "number", "salt", "signature"}
    assert 0 <= fields["number"] <= MAX_NUMBER


def test_a_challenge_needs_a_positive_difficulty_and_lifetime():
    with pytest.raises(ValueError):
        create_challenge(SECRET, 0, TTL)
    with pytest.raises(ValueError):
        create_challenge(SECRET, MAX_NUMBER, 0)


def test_a_tampered_signature_is_refused():
    fields = _fields(solve_challenge(_challenge()))
    fields["signature"] = ("0" if fields["signature"][0] != "0" else "1") + fields["signature"][1:]
    assert _refusal(encode_payload(fields)) == Failure.BAD_SIGNATURE


def test_a_challenge_signed_with_another_key_is_refused():
    payload = solve_challenge(_challenge(secret="someone-elses-key-0123456789abcd"))
    assert _refusal(payload) == Failure.BAD_SIGNATURE


def test_a_self_made_challenge_is_refused():
    # A bot that invents an easy challenge of its own cannot sign it.
    fields = _fields(solve_challenge(_challenge()))
    forged = create_challenge("a-guess-at-the-key-0123456789abc", 1, TTL, now=NOW)
    fields.update(challenge=forged["challenge"], salt=forged["salt"])
    assert _refusal(encode_payload(fields)) == Failure.BAD_SIGNATURE


def test_a_wrong_number_is_refused():
    fields = _fields(solve_challenge(_challenge()))
    fields["number"] = (fields["number"] + 1) % (MAX_NUMBER + 1)
    assert _refusal(encode_payload(fields)) == Failure.WRONG_NUMBER


def test_a_changed_salt_is_refused():
    fields = _fields(solve_challenge(_challenge()))
    fields["salt"] = fields["salt"].replace("?expires=", "?expires=9")
    assert _refusal(encode_payload(fields)) == Failure.WRONG_NUMBER


def test_digits_of_the_number_cannot_be_moved_into_the_expiry():
    # sha256(salt + "12") == sha256((salt + "1") + "2"): without the salt's closing
    # "&" this would stretch the signed expiry while every check still passed.
    for _ in range(100):
        fields = _fields(solve_challenge(_challenge()))
        if fields["number"] >= 10:
            break
    digits = str(fields["number"])
    fields.update(salt=fields["salt"] + digits[0], number=int(digits[1:]))
    assert _refusal(encode_payload(fields)) == Failure.MALFORMED


def test_a_solution_is_accepted_until_its_challenge_expires():
    payload = solve_challenge(_challenge())
    verify_solution(payload, SECRET, InMemoryUsedChallenges(), now=NOW + TTL - 1)
    assert _refusal(payload, now=NOW + TTL) == Failure.EXPIRED
    assert _refusal(payload, now=NOW + 10 * TTL) == Failure.EXPIRED


def test_a_solution_can_be_spent_once():
    used = InMemoryUsedChallenges()
    payload = solve_challenge(_challenge())
    verify_solution(payload, SECRET, used, now=NOW + 1)
    assert _refusal(payload, used, now=NOW + 2) == Failure.REPLAYED


def test_a_spent_solution_is_remembered_until_it_expires_anyway():
    used = InMemoryUsedChallenges()
    payload = solve_challenge(_challenge())
    verify_solution(payload, SECRET, used, now=NOW + 1)
    assert _refusal(payload, used, now=NOW + TTL - 1) == Failure.REPLAYED
    # The store may forget it now: the expiry refuses it from here on.
    assert used.claim("something-else", 1, now=NOW + TTL)
    assert len(used) == 1
    assert _refusal(payload, used, now=NOW + TTL) == Failure.EXPIRED


def test_a_refused_attempt_does_not_spend_the_challenge():
    used = InMemoryUsedChallenges()
    payload = solve_challenge(_challenge())
    wrong = _fields(payload)
    wrong["number"] = (wrong["number"] + 1) % (MAX_NUMBER + 1)
    assert _refusal(encode_payload(wrong), used) == Failure.WRONG_NUMBER
    verify_solution(payload, SECRET, used, now=NOW + 1)


@pytest.mark.parametrize("payload", ["", "   "], ids=["empty", "blank"])
def test_a_missing_payload_is_refused(payload):
    assert _refusal(payload) == Failure.MISSING


def _encoded(value) -> str:
    return base64.b64encode(json.dumps(value).encode()).decode()


@pytest.mark.parametrize(
    "payload",
    [
        "not base64 at all!",
        "bm90LWpzb24",  # unpadded
        base64.b64encode(b"not json").decode(),
        base64.b64encode(b"\xff\xfe\xfd").decode(),
        _encoded(["a", "list"]),
        _encoded("a string"),
        "A" * 2000,
    ],
    ids=["garbage", "unpadded", "not-json", "not-utf8", "json-list", "json-string", "too-long"],
)
def test_a_garbled_payload_is_refused(payload):
    assert _refusal(payload) == Failure.MALFORMED


@pytest.mark.parametrize("missing", ["algorithm", "challenge", "number", "salt", "signature"])
def test_a_payload_without_every_field_is_refused(missing):
    fields = _fields(solve_challenge(_challenge()))
    del fields[missing]
    assert _refusal(encode_payload(fields)) == Failure.MALFORMED


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("number", "42"),
        ("number", True),
        ("number", -1),
        ("number", 1.0),
        ("algorithm", "SHA-1"),
        ("challenge", "ABC"),
        ("signature", None),
        ("salt", "no-expiry-here"),
        ("salt", 12),
    ],
    ids=["number-text", "number-bool", "number-negative", "number-float", "algorithm",
         "challenge-not-hex", "signature-null", "salt-without-expiry", "salt-number"],
)
def test_a_payload_with_a_field_of_the_wrong_shape_is_refused(name, value):
    fields = _fields(solve_challenge(_challenge()))
    fields[name] = value
    assert _refusal(encode_payload(fields)) == Failure.MALFORMED


def test_the_refusal_names_its_reason():
    error = InvalidProofOfWork(Failure.EXPIRED)
    assert error.reason == Failure.EXPIRED
    assert "expired" in str(error)


def test_the_memory_store_refuses_a_second_claim_within_the_ttl():
    used = InMemoryUsedChallenges()
    assert used.claim("abc", 10, now=NOW)
    assert not used.claim("abc", 10, now=NOW + 9.9)
    assert used.claim("other", 10, now=NOW + 9.9)


def test_the_memory_store_forgets_after_the_ttl():
    used = InMemoryUsedChallenges()
    assert used.claim("abc", 10, now=NOW)
    assert used.claim("def", 20, now=NOW)
    assert used.claim("abc", 10, now=NOW + 10)
    assert len(used) == 2
    assert used.claim("ghi", 10, now=NOW + 30)
    assert len(used) == 1  # "abc" and "def" are gone once their time is up
