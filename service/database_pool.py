"""Check a pooled connection before use only when it has sat idle, not on every checkout.

SQLAlchemy's ``pool_pre_ping`` pings at every checkout: under load, one round
trip more per request for a connection used a millisecond ago, a quarter of a
form post's trips to PostgreSQL. Like HikariCP's "alive bypass window"
(500 ms), a connection returned to the pool less than ``ALIVE_WINDOW_SECONDS``
ago is trusted; an older one is pinged, and one that fails the ping is replaced
before anyone uses it. A connection that dies inside the window fails its next
statement instead, and SQLAlchemy then invalidates the whole pool, as it does
for any disconnect.
"""

from __future__ import annotations

import time

from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DisconnectionError

ALIVE_WINDOW_SECONDS = 0.5
_RETURNED_AT = "newsletter_returned_at"


def ping_idle_connections(engine: Engine, alive_window: float | None = None) -> None:
    window = ALIVE_WINDOW_SECONDS if alive_window is None else alive_window

    @event.listens_for(engine, "checkin")
    def _returned(dbapi_connection, record) -> None:  # type: ignore[no-untyped-def]
        # record.info belongs to this DBAPI connection and is cleared when it is replaced.
        record.info[_RETURNED_AT] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _taken(dbapi_connection, record, proxy) -> None:  # type: ignore[no-untyped-def]
        returned_at = record.info.get(_RETURNED_AT)
        if returned_at is None or time.monotonic() - returned_at < window:
            return  # new, or used a moment ago
        try:
            engine.dialect.do_ping(dbapi_connection)
        except engine.dialect.loaded_dbapi.Error as error:
            # The pool discards this connection and connects anew (once more before it gives up).
            raise DisconnectionError(f"an idle connection failed its ping: {error}") from error
