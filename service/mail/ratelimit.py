"""A global send rate: messages per second across every worker process.

Relays often cap throughput per account. A token bucket in Redis (one Lua
script, Redis's own clock) is shared by all workers on all machines. Without
Redis (the embedded mode, one worker) a bucket in the process does the job.
"""

from __future__ import annotations

import threading
import time
from typing import Protocol

import redis

from service.config import Settings

# Refill by elapsed time on Redis's clock, take one token if there is one,
# else report how long until there is. Returns milliseconds to wait (0 = go).
_TOKEN_BUCKET = """
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1]) or burst
local ts = tonumber(state[2]) or now_ms
tokens = math.min(burst, tokens + (now_ms - ts) * rate / 1000)
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
else
  wait = math.ceil((1 - tokens) * 1000 / rate)
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', now_ms)
redis.call('PEXPIRE', KEYS[1], math.ceil(burst * 1000 / rate) + 1000)
return wait
"""


class RateLimiter(Protocol):
    def try_acquire(self) -> float:
        """Take a token now and return 0, or return the seconds until one is free."""

    def wait(self) -> None:
        """Block until a token is taken."""


class _Waiting:
    def wait(self) -> None:
        while (delay := self.try_acquire()) > 0:  # type: ignore[attr-defined]
            time.sleep(delay)


class RedisTokenBucket(_Waiting):
    """One bucket in Redis under ``key``, shared by every process that names it."""

    def __init__(self, client: redis.Redis, key: str, rate: float, burst: int) -> None:
        self._script = client.register_script(_TOKEN_BUCKET)
        self._key, self._rate, self._burst = key, rate, burst

    def try_acquire(self) -> float:
        return int(self._script(keys=[self._key], args=[self._rate, self._burst])) / 1000


class LocalTokenBucket(_Waiting):
    """The same bucket inside one process, for setups without Redis."""

    def __init__(self, rate: float, burst: int) -> None:
        self._rate, self._burst = rate, burst
        self._tokens = float(burst)
        self._stamp = time.monotonic()
        self._lock = threading.Lock()

    def try_acquire(self) -> float:
        with self._lock:
            now = time.monotonic()
            self._tokens = min(self._burst, self._tokens + (now - self._stamp) * self._rate)
            self._stamp = now
            if self._tokens >= 1:
                self._tokens -= 1
                return 0.0
            return (1 - self._tokens) / self._rate


_limiters: dict[tuple[str | None, float, int], RateLimiter] = {}


def rate_limiter_for(settings: Settings) -> RateLimiter | None:
    """The process's limiter for these settings, or None when there is no limit."""
    if settings.SEND_RATE_LIMIT <= 0:
        return None
    burst = settings.SEND_RATE_BURST or max(1, int(settings.SEND_RATE_LIMIT))
    key = (settings.RATE_LIMIT_REDIS_URL, settings.SEND_RATE_LIMIT, burst)
    if key not in _limiters:
        if settings.RATE_LIMIT_REDIS_URL:
            client = redis.Redis.from_url(settings.RATE_LIMIT_REDIS_URL)
            _limiters[key] = RedisTokenBucket(client, "newsletter:send-rate", settings.SEND_RATE_LIMIT, burst)
        else:
            _limiters[key] = LocalTokenBucket(settings.SEND_RATE_LIMIT, burst)
    return _limiters[key]
