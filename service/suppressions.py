"""The suppression list: addresses we must never mail again.

Entries are SHA-256 hashes of the normalised address, so the list can outlive
the subscriber (erasure, deletion) without keeping the address itself, and
is checked right before every send.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterable
from datetime import datetime

from email_validator import EmailNotValidError, validate_email
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service.models import Subscriber, Suppression, SuppressionReason, utcnow
from service.value_lists import among


def canonical_address(email: str) -> str:
    """An address in the form we store it: trimmed, lower-case, an international domain in ASCII.

    Lenient where ``subscriptions.normalise_email`` is strict: for lookups and
    hashes, so "reader@bücher.example" finds the reader stored as
    "reader@xn--bcher-kva.example", and text that is no address is only trimmed.
    """
    email = email.strip()
    if not email.isascii():
        with contextlib.suppress(EmailNotValidError):
            email = validate_email(email, check_deliverability=False).ascii_email or email
    return email.lower()


def address_hash(email: str) -> str:
    """The hash we store for an address: of its canonical form."""
    return _sha256(canonical_address(email))


def address_hashes(email: str) -> list[str]:
    """Every hash an entry for this address may have: the canonical one first.

    Until migration 0007, an international domain was stored, and hashed, in
    Unicode. Hashes cannot be rewritten (an erased reader's address is gone),
    so entries made then are found under that spelling too.
    """
    address = canonical_address(email)
    hashes = [_sha256(address)]
    if "xn--" in address:
        with contextlib.suppress(EmailNotValidError):
            unicode_spelling = validate_email(address, check_deliverability=False).normalized.lower()
            if unicode_spelling != address:
                hashes.append(_sha256(unicode_spelling))
    return hashes


def suppression_of(session: Session, email: str) -> Suppression | None:
    """The entry of this address, if it has one."""
    entries = {entry.email_hash: entry for entry in session.scalars(
        select(Suppression).where(Suppression.email_hash.in_(address_hashes(email))))}
    return next((entries[digest] for digest in address_hashes(email) if digest in entries), None)


def is_suppressed(session: Session, email: str) -> bool:
    return session.scalar(
        select(Suppression.id).where(Suppression.email_hash.in_(address_hashes(email))).limit(1)
    ) is not None


def suppressed_addresses(session: Session, emails: Iterable[str]) -> set[str]:
    """Those of ``emails`` that are on the list, in one query."""
    by_hash = {digest: email for email in emails for digest in address_hashes(email)}
    if not by_hash:
        return set()
    found = session.scalars(
        select(Suppression.email_hash).where(among(session, Suppression.email_hash, by_hash)))
    return {by_hash[digest] for digest in found}


def suppress(session: Session, email: str, reason: SuppressionReason, detail: str | None = None
             ) -> Suppression:
    """Add the address to the list (once; a second call returns the first entry).

    A subscriber with this address is marked too, so digest planning skips them.
    """
    _mark_subscriber(session, email, utcnow())
    digest = address_hash(email)
    existing = suppression_of(session, email)
    if existing is not None:
        return existing
    entry = Suppression(email_hash=digest, reason=reason, detail=detail)
    try:
        with session.begin_nested():
            session.add(entry)
    except IntegrityError:  # suppressed concurrently, by another bounce of the same address
        return session.scalars(select(Suppression).where(Suppression.email_hash == digest)).one()
    return entry


def unsuppress(session: Session, email: str) -> bool:
    """Remove the address from the list (an operator's decision); True if it was there."""
    entries = session.scalars(
        select(Suppression).where(Suppression.email_hash.in_(address_hashes(email)))).all()
    _mark_subscriber(session, email, None)
    for entry in entries:
        session.delete(entry)
    return bool(entries)


def _mark_subscriber(session: Session, email: str, suppressed_at: datetime | None) -> None:
    session.execute(
        update(Subscriber).where(Subscriber.email == canonical_address(email))
        .values(suppressed_at=suppressed_at)
        .execution_options(synchronize_session="fetch")
    )


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
