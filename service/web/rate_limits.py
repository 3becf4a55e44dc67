"""Fixed-window rate limits on the subscription form, every window of a post counted at once.

A post is counted against its client IP, its target address and its target
domain, each with one or more windows ("20/minute;200/hour"). Flask-Limiter
counted each window in a round trip of its own to Redis: five per post, and
38 % of a web worker's CPU under load (docs/benchmarks.md). Here one Lua script
counts them all. Any other store the `limits` library knows (memory://,
memcached://, a Redis cluster, whose keys may live on different nodes) is
counted window by window through that library, with the same keys.

The windows are checked in order (IP, address, domain), and counting stops at
the first one exceeded, so a flood refused at its IP does not use up the
budget of the domain it targets. If the store cannot be reached, the post is
served uncounted: losing subscriptions would be worse than a pause in the limits.

Each thread counts on a Redis connection of its own, held for its lifetime: a
connection taken from the client's pool and given back for every post cost a
fifth of the count's CPU (a readiness poll of the socket, locks, bookkeeping).
Granian's threads live until they sit idle for 30 s (--blocking-threads-idle-timeout),
so under load a connection serves thousands of posts; a server that starts a
thread per request (Flask's development server) opens a connection per post.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import redis
from limits import RateLimitItem, parse_many
from limits.storage import RedisClusterStorage, RedisStorage, Storage, storage_from_string
from limits.strategies import FixedWindowRateLimiter
from redis.backoff import NoBackoff
from redis.retry import Retry

log = logging.getLogger(__name__)

KEY_PREFIX = "newsletter-limits"
STORE_TIMEOUT_SECONDS = 1.0

# KEYS: one per window, in the order to check them. ARGV: each window's length
# in seconds, then its allowance. Returns {index of the first window exceeded
# (1-based, 0 if none), seconds until it resets}.
COUNT_WINDOWS = """
for i, key in ipairs(KEYS) do
  local count = redis.call('INCR', key)
  if count == 1 then redis.call('EXPIRE', key, ARGV[2 * i - 1]) end
  if count > tonumber(ARGV[2 * i]) then
    local ttl = redis.call('TTL', key)
    if ttl < 0 then
      -- A count without an expiry (never ours) would refuse for ever: give it its window.
      redis.call('EXPIRE', key, ARGV[2 * i - 1])
      ttl = tonumber(ARGV[2 * i - 1])
    end
    return {i, ttl}
  end
end
return {0, 0}
"""


@dataclass(frozen=True)
class Window:
    """One allowance of one scope ("ip", "address", "domain"), e.g. 20 a minute."""

    scope: str
    rate: RateLimitItem


@dataclass(frozen=True)
class Refusal:
    scope: str
    retry_after: int  # whole seconds, at least 1


class SubscribeLimits:
    """The form's windows over one `limits` store, counted in one round trip where the store allows."""

    def __init__(self, storage_uri: str, rates: Sequence[tuple[str, str]]) -> None:
        # Shortest window first within a scope, as Flask-Limiter ordered them, so a post
        # refused for the minute is not counted against the hour.
        self.windows = [Window(scope, item) for scope, rate in rates
                        for item in sorted(parse_many(rate), key=lambda item: item.get_expiry())]
        self.storage: Storage = storage_from_string(
            storage_uri, key_prefix=KEY_PREFIX,
            # A store that hangs must not hold the post for long: it is then served uncounted.
            socket_timeout=STORE_TIMEOUT_SECONDS, socket_connect_timeout=STORE_TIMEOUT_SECONDS,
        ) if storage_uri.startswith(("redis", "valkey")) else storage_from_string(storage_uri)
        self._one_trip = isinstance(self.storage, RedisStorage) and not isinstance(self.storage,
                                                                                   RedisClusterStorage)
        self._script = self.storage.storage.register_script(COUNT_WINDOWS) if self._one_trip else None
        self._fixed_window = FixedWindowRateLimiter(self.storage)
        self._own = threading.local()  # this thread's client, and the process it belongs to

    def hit(self, identities: dict[str, str]) -> Refusal | None:
        """Count one post, ``identities`` naming it in each scope; the window it exceeds, if any."""
        try:
            return self._hit_at_once(identities) if self._one_trip else self._hit_one_by_one(identities)
        except self.storage.base_exceptions as error:
            log.warning("rate limits not counted, their store failed: %s: %s",
                        error.__class__.__name__, error)
            return None

    def reset(self) -> None:
        """Forget every count (tests; an operator lifting a block)."""
        self.storage.reset()

    def _hit_at_once(self, identities: dict[str, str]) -> Refusal | None:
        keys: list[str] = []
        arguments: list[int] = []
        for window in self.windows:
            key = window.rate.key_for(window.scope, identities[window.scope])
            keys.append(self.storage.prefixed_key(key))
            arguments += (window.rate.get_expiry(), window.rate.amount)
        exceeded, seconds_left = self._script(keys=keys, args=arguments, client=self._thread_client())
        if not exceeded:
            return None
        return Refusal(self.windows[exceeded - 1].scope, max(1, int(seconds_left)))

    def _thread_client(self) -> redis.Redis:
        own = self._own
        if getattr(own, "pid", None) != os.getpid():  # new thread, or a forked child's copy
            shared = self.storage.storage.connection_pool
            # A pool checks a connection before lending it; a held one is found dropped (a Redis
            # restart, an idle timeout) only by the next command, which reconnects and goes
            # again once. Not after a timeout: a hung store must not hold the post twice as long.
            own_pool = redis.ConnectionPool(
                connection_class=shared.connection_class, **shared.connection_kwargs,
                retry=Retry(NoBackoff(), retries=1, supported_errors=(redis.ConnectionError,)))
            own.client = redis.Redis(connection_pool=own_pool, single_connection_client=True)
            # Owned, as Redis.from_pool would: the socket closes when the thread ends.
            own.client.auto_close_connection_pool = True
            own.pid = os.getpid()
        return own.client

    def _hit_one_by_one(self, identities: dict[str, str]) -> Refusal | None:
        for window in self.windows:
            identity = identities[window.scope]
            if not self._fixed_window.hit(window.rate, window.scope, identity):
                reset_at = self._fixed_window.get_window_stats(window.rate, window.scope, identity).reset_time
                return Refusal(window.scope, max(1, int(reset_at - time.time())))
        return None
