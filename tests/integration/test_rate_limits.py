"""The form's rate limits on Redis (one Lua call per post) and on the in-process store."""

import logging
import threading
import time

import pytest
import redis

from service.web.rate_limits import KEY_PREFIX, SubscribeLimits
from tests.conftest import TEST_REDIS_URL

RATES = [("ip", "5/hour;3/minute"), ("address", "2/hour"), ("domain", "4/hour")]


def _post(address: str, ip: str = "192.0.2.1") -> dict[str, str]:
    return {"ip": ip, "address": address, "domain": address.rpartition("@")[2]}


@pytest.fixture(params=["redis", "memory"])
def limits(request: pytest.FixtureRequest) -> SubscribeLimits:
    limits = SubscribeLimits(TEST_REDIS_URL if request.param == "redis" else "memory://", RATES)
    limits.reset()
    yield limits
    limits.reset()


def test_redis_counts_a_post_in_one_call_and_memory_window_by_window():
    assert SubscribeLimits(TEST_REDIS_URL, RATES)._one_trip
    assert not SubscribeLimits("memory://", RATES)._one_trip


def test_each_scope_refuses_past_its_allowance_with_the_seconds_left(limits):
    assert limits.hit(_post("a@one.example")) is None
    assert limits.hit(_post("a@one.example")) is None
    refusal = limits.hit(_post("a@one.example"))
    assert refusal is not None and refusal.scope == "address"
    assert 3590 <= refusal.retry_after <= 3600


def test_the_minute_window_of_an_ip_trips_before_its_hour(limits):
    answers = [limits.hit(_post(f"r{n}@example.{n}")) for n in range(4)]
    assert answers[:3] == [None, None, None]
    assert answers[3].scope == "ip" and 1 <= answers[3].retry_after <= 60
    assert limits.hit(_post("r9@example.9", ip="192.0.2.2")) is None


def test_a_post_refused_at_its_ip_does_not_use_up_the_domain(limits):
    flood = [limits.hit(_post(f"victim{n}@small.example")) for n in range(6)]
    assert [r.scope if r else None for r in flood] == [None, None, None, "ip", "ip", "ip"]
    # Three counted against the domain's four: one more from elsewhere still passes.
    assert limits.hit(_post("victim9@small.example", ip="198.51.100.7")) is None
    assert limits.hit(_post("victim10@small.example", ip="198.51.100.8")).scope == "domain"


def test_counts_expire_with_their_window_in_redis():
    limits = SubscribeLimits(TEST_REDIS_URL, RATES)
    limits.reset()
    limits.hit(_post("a@one.example"))
    client = redis.Redis.from_url(TEST_REDIS_URL)
    ttls = sorted(client.ttl(key) for key in client.scan_iter(f"{KEY_PREFIX}:*"))
    assert len(ttls) == 4  # ip minute and hour, address hour, domain hour
    assert 0 < ttls[0] <= 60 and all(3590 <= ttl <= 3600 for ttl in ttls[1:])
    limits.reset()
    assert list(client.scan_iter(f"{KEY_PREFIX}:*")) == []


def test_an_unreachable_store_lets_the_post_through_and_says_so(caplog):
    limits = SubscribeLimits("redis://127.0.0.1:1/0", RATES)
    with caplog.at_level(logging.WARNING, logger="service.web.rate_limits"):
        answers = [limits.hit(_post("a@one.example")) for _ in range(5)]
    assert answers == [None] * 5
    assert "rate limits not counted, their store failed: ConnectionError: " in caplog.text


def test_the_form_is_served_while_the_limit_store_is_down(stack, app):
    unlimited = stack.make_app(LIMITER_STORAGE_URL="redis://127.0.0.1:1/0",
                               SUBSCRIBE_LIMIT_PER_ADDRESS="1/hour")
    client = unlimited.test_client()
    form = {"email": "peggy@example.com", "topics": "marvel-news"}
    codes = [client.post("/subscribe", data=form).status_code for _ in range(2)]
    assert codes == [200, 200]


def test_a_count_left_without_an_expiry_gets_its_window_back():
    limits = SubscribeLimits(TEST_REDIS_URL, RATES)
    limits.reset()
    window = next(w for w in limits.windows if w.scope == "address")
    key = limits.storage.prefixed_key(window.rate.key_for("address", "stuck@example.com"))
    client = redis.Redis.from_url(TEST_REDIS_URL)
    client.set(key, 99)  # no TTL
    refusal = limits.hit(_post("stuck@example.com", ip="203.0.113.5"))
    assert refusal.scope == "address" and 3590 <= refusal.retry_after <= 3600
    assert 3590 <= client.ttl(key) <= 3600
    limits.reset()


def test_a_threads_connection_that_redis_dropped_is_replaced_and_counting_goes_on():
    limits = SubscribeLimits(TEST_REDIS_URL, RATES)
    limits.reset()
    assert limits.hit(_post("dropped@example.com")) is None
    host, port = limits._thread_client().connection._sock.getsockname()[:2]
    assert redis.Redis.from_url(TEST_REDIS_URL).client_kill(f"{host}:{port}")
    assert limits.hit(_post("dropped@example.com")) is None  # counted on a new connection
    refusal = limits.hit(_post("dropped@example.com"))
    assert refusal is not None and refusal.scope == "address"  # both earlier posts were counted
    limits.reset()


def test_each_thread_counts_on_a_connection_of_its_own_closed_when_the_thread_ends():
    limits = SubscribeLimits(TEST_REDIS_URL, RATES)
    limits.reset()
    sockets: list[str] = []
    counted, inspected = threading.Barrier(4, timeout=10), threading.Event()

    def post(n: int) -> None:
        limits.hit(_post(f"thread{n}@example.{n}", ip=f"198.51.100.{n}"))
        host, port = limits._thread_client().connection._sock.getsockname()[:2]
        sockets.append(f"{host}:{port}")
        counted.wait()
        inspected.wait(10)

    def last_commands() -> dict[str, str]:
        return {entry["addr"]: entry["cmd"] for entry in client.client_list()}

    client = redis.Redis.from_url(TEST_REDIS_URL)
    threads = [threading.Thread(target=post, args=(n,)) for n in range(3)]
    for thread in threads:
        thread.start()
    counted.wait()
    # Three connections, and the ones that counted: the script was the last thing each ran.
    assert len(set(sockets)) == 3
    assert [last_commands().get(address) for address in sockets] == ["evalsha"] * 3
    inspected.set()
    for thread in threads:
        thread.join(10)
    deadline = time.monotonic() + 10
    while set(sockets) & last_commands().keys() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not set(sockets) & last_commands().keys()  # each closed with its thread
    assert sum(int(client.get(key)) for key in client.scan_iter(f"{KEY_PREFIX}:*domain*")) == 3
    limits.reset()
