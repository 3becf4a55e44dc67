import time

import pytest
from itsdangerous import TimestampSigner, URLSafeTimedSerializer

from service.tokens import ExpiredToken, InvalidToken, TokenPurpose, TokenSigner

KEY = "current-key-for-tests-0123456789"
OLD_KEY = "older-key-for-tests-0123456789"


def test_a_token_reads_back_its_claims():
    signer = TokenSigner(KEY)
    token = signer.sign(TokenPurpose.CONFIRM, {"sid": 7, "e": 2})
    assert signer.read(TokenPurpose.CONFIRM, token, max_age=60) == {"sid": 7, "e": 2}


@pytest.mark.parametrize("claims", [{"sid": 1}, {"sid": 2**40, "e": 7}])
@pytest.mark.parametrize("purpose", list(TokenPurpose))
def test_tokens_are_itsdangerous_tokens_byte_for_byte(purpose, claims):
    """Links already sent must keep working, and ours must read as itsdangerous's own."""
    ours = TokenSigner(KEY, (OLD_KEY,))
    stock = URLSafeTimedSerializer([OLD_KEY, KEY], salt=f"newsletter.{purpose.value}")
    for _ in range(3):  # until both are signed within the same second
        token, expected = ours.sign(purpose, claims), stock.dumps(claims)
        if token.split(".")[1] == expected.split(".")[1]:
            break
    assert token == expected
    assert stock.loads(token) == claims
    assert ours.read(purpose, URLSafeTimedSerializer(OLD_KEY, salt=f"newsletter.{purpose.value}").dumps(
        claims)) == claims  # signed with the key before last


def test_a_token_carries_ids_and_no_email_address():
    token = TokenSigner(KEY).sign(TokenPurpose.UNSUBSCRIBE, {"sid": 7})
    # Anyone can read a token's payload without the key: it must hold nothing personal.
    _, payload = URLSafeTimedSerializer("any key").loads_unsafe(token)
    assert payload == {"sid": 7}


@pytest.mark.parametrize(
    "mangle",
    [
        # The last base64 character may carry only padding bits, so change one before it.
        lambda t: t[:-5] + ("A" if t[-5] != "A" else "B") + t[-4:],
        lambda t: t[: len(t) // 2],  # truncated
        lambda t: "x" + t,  # tampered payload
        lambda t: "",
        lambda t: "not-a-token",
    ],
    ids=["signature", "truncated", "payload", "empty", "garbage"],
)
def test_a_mangled_token_is_refused(mangle):
    signer = TokenSigner(KEY)
    token = signer.sign(TokenPurpose.CONFIRM, {"sid": 1, "e": 1})
    with pytest.raises(InvalidToken):
        signer.read(TokenPurpose.CONFIRM, mangle(token))


def test_a_token_for_one_purpose_does_not_work_for_another():
    signer = TokenSigner(KEY)
    unsubscribe = signer.sign(TokenPurpose.UNSUBSCRIBE, {"sid": 1})
    with pytest.raises(InvalidToken):
        signer.read(TokenPurpose.CONFIRM, unsubscribe)
    with pytest.raises(InvalidToken):
        signer.read(TokenPurpose.PREFERENCES, unsubscribe)


def test_an_expired_token_says_so_and_keeps_its_claims():
    class Yesterday(TimestampSigner):
        def get_timestamp(self) -> int:
            return int(time.time()) - 86400

    old = URLSafeTimedSerializer(KEY, salt="newsletter.confirm", signer=Yesterday).dumps({"sid": 3, "e": 1})
    with pytest.raises(ExpiredToken) as caught:
        TokenSigner(KEY).read(TokenPurpose.CONFIRM, old, max_age=3600)
    assert caught.value.claims == {"sid": 3, "e": 1}


def test_rotated_keys_still_verify_until_removed():
    old_token = TokenSigner(OLD_KEY).sign(TokenPurpose.UNSUBSCRIBE, {"sid": 5})
    rotated = TokenSigner(KEY, fallback_keys=(OLD_KEY,))
    assert rotated.read(TokenPurpose.UNSUBSCRIBE, old_token) == {"sid": 5}
    # New tokens are signed with the new key only.
    new_token = rotated.sign(TokenPurpose.UNSUBSCRIBE, {"sid": 5})
    assert TokenSigner(KEY).read(TokenPurpose.UNSUBSCRIBE, new_token) == {"sid": 5}
    with pytest.raises(InvalidToken):
        TokenSigner(OLD_KEY).read(TokenPurpose.UNSUBSCRIBE, new_token)
    # Once the old key is dropped, its tokens stop working.
    with pytest.raises(InvalidToken):
        TokenSigner(KEY).read(TokenPurpose.UNSUBSCRIBE, old_token)


def test_claims_that_are_not_an_object_are_refused():
    token = URLSafeTimedSerializer(KEY, salt="newsletter.confirm").dumps([1, 2])
    with pytest.raises(InvalidToken):
        TokenSigner(KEY).read(TokenPurpose.CONFIRM, token)


@pytest.mark.parametrize("suffix", ["=", "é", "!!!!", " "])
def test_a_token_has_exactly_one_spelling(suffix):
    signer = TokenSigner(KEY)
    token = signer.sign(TokenPurpose.CONFIRM, {"sid": 1})
    with pytest.raises(InvalidToken):
        signer.read(TokenPurpose.CONFIRM, token + suffix)
