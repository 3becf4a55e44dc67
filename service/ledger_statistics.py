"""Keeping PostgreSQL's picture of the delivery ledger in step with a large send.

A fan-out adds its queued deliveries faster than autovacuum notices them: it
analyses a table a minute or more after a burst of inserts. Until then the
planner believes next to nothing is queued and serves each worker's claim of
a group of ids from the state index, reading every queued row for each claim:
34 ms a claim instead of 0.2 ms at 30,000 readers, and more the larger the
send (docs/benchmarks.md). So planning analyses the ledger itself, once per
run, as soon as it has queued enough rows for the difference to matter.
"""

from __future__ import annotations

import logging

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

log = logging.getLogger(__name__)

# SKIP_LOCKED: a VACUUM or CREATE INDEX running on a table must not hold up a send.
_ANALYZE = text("ANALYZE (SKIP_LOCKED) deliveries, digest_items")
# Only an owner of the tables or of the database (or a superuser) may analyse them.
_MAY_ANALYZE = text(
    "SELECT bool_and(pg_has_role(c.relowner, 'MEMBER')) OR pg_has_role(d.datdba, 'MEMBER') "
    "FROM pg_class c, pg_database d "
    "WHERE c.oid IN ('deliveries'::regclass, 'digest_items'::regclass) AND d.datname = current_database() "
    "GROUP BY d.datdba"
)


class LedgerStatistics:
    """Analyses the ledger once in a planning run, when ``threshold`` deliveries are planned.

    Below that, a claim that picks the wrong index reads at most ``threshold``
    rows, which is cheap; above it the planner must know.
    """

    def __init__(self, session: Session, threshold: int) -> None:
        self._session = session
        self._threshold = threshold
        self._planned = 0
        self._analysed = False

    def planned(self, count: int) -> None:
        self._planned += count
        if self._analysed or self._planned < max(self._threshold, 1):
            return
        self._analysed = True
        if self._session.get_bind().dialect.name == "postgresql":
            analyse_ledger(self._session)


def analyse_ledger(session: Session) -> bool:
    """ANALYZE deliveries and digest_items; a failure is logged, never raised."""
    try:
        if not session.scalar(_MAY_ANALYZE):
            log.warning("the database role does not own deliveries and digest_items, so it cannot "
                        "analyse them after planning; workers' claims may be slow until autovacuum does")
            session.rollback()
            return False
        session.execute(_ANALYZE)
        session.commit()
    except DBAPIError as error:  # a statement_timeout, say: the planned batches are committed
        session.rollback()
        log.warning("could not analyse the delivery ledger after planning: %s", error)
        return False
    return True
