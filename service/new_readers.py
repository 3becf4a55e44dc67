"""The commonest form post, an address we have never seen, as one PostgreSQL statement.

Data-modifying CTEs insert the reader, a pending subscription per topic, their
consent records and the confirmation delivery in a single round trip, where the
general path in ``service.subscriptions`` (which every other case takes, and
SQLite always) needs a query and a flush per step. The statement is built once
per process and carries only bound parameters. When the caller asks for it (a
form post) and its session has no transaction open, it runs on a connection of
its own in autocommit mode: one round trip, without BEGIN and COMMIT, and on
the driver's cursor (``service.fixed_statements``), at half the CPU.

It inserts nothing, and the caller falls back to the general path, when the
address exists already (``ON CONFLICT DO NOTHING``, which also waits out a
concurrent post for the same address) or when any of the topics is unknown or
retired, so that the general path reports the error.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Integer, String, bindparam, func, literal_column, select
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import Session
from sqlalchemy.sql import Select

from service.autocommit import can_commit_alone
from service.consent import ConsentContext, consent_values
from service.fixed_statements import FixedStatement, execute_fixed_alone
from service.models import (
    ConsentRecord,
    Delivery,
    DeliveryKind,
    DeliveryState,
    Subscriber,
    SubscriberStatus,
    Subscription,
    SubscriptionStatus,
    Topic,
)


@dataclass(frozen=True)
class NewReader:
    """A form post whose fields have all been checked, apart from whether its topics exist."""

    email: str
    topic_slugs: Sequence[str]  # normalised and without repeats
    name: str | None
    frequency: str | None  # None: the first of the topics' defaults, else the service's
    timezone: str | None
    consent: ConsentContext | None


def supported(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def insert_new_reader(session: Session, reader: NewReader, default_frequency: str,
                      now: datetime, commit_alone: bool = False) -> tuple[int, int] | None:
    """Insert the reader and everything a first post creates; returns (subscriber id,
    confirmation delivery id), or None when nothing was inserted. With ``commit_alone``
    and no transaction open in ``session``, the statement commits itself."""
    consent = consent_values(reader.consent) if reader.consent is not None else {}
    parameters = {
        "slugs": list(reader.topic_slugs),
        "topic_count": len(reader.topic_slugs),
        "email": reader.email,
        "name": reader.name,
        "frequency": reader.frequency,
        "default_frequency": default_frequency,
        "timezone": reader.timezone or "UTC",
        "now": now,
        "record_consent": reader.consent is not None,
        **{f"consent_{key}": consent.get(key) for key in _CONSENT_FIELDS},
    }
    if commit_alone and can_commit_alone(session):
        # The caller commits next and has nothing open; the statement is atomic on its own.
        [(subscriber_id, delivery_id)] = execute_fixed_alone(session, _STATEMENT, parameters)
    else:
        subscriber_id, delivery_id = session.execute(_STATEMENT.statement, parameters).one()
    if subscriber_id is None:
        return None
    return subscriber_id, delivery_id


_CONSENT_FIELDS = ("source", "page_url", "ip_address", "user_agent", "consent_text_version")


def _statement() -> Select:
    now = bindparam("now", type_=Subscriber.created_at.type)
    requested = (
        func.unnest(bindparam("slugs", type_=postgresql.ARRAY(String)))
        .table_valued("slug", with_ordinality="position")
        .render_derived()
    )
    wanted = (
        select(Topic.id, Topic.default_frequency, requested.c.position)
        .join(requested, requested.c.slug == Topic.slug)
        .where(Topic.retired_at.is_(None))
        .cte("wanted")
    )
    every_topic_found = (
        select(func.count()).select_from(wanted).scalar_subquery()
        == bindparam("topic_count", type_=Integer)
    )
    topics_default = (
        select(wanted.c.default_frequency)
        .where(wanted.c.default_frequency.is_not(None))
        .order_by(wanted.c.position)
        .limit(1)
        .scalar_subquery()
    )
    frequency = func.coalesce(
        bindparam("frequency", type_=String), topics_default, bindparam("default_frequency", type_=String)
    )
    new_reader = (
        postgresql.insert(Subscriber)
        .from_select(
            ["email", "name", "frequency", "status", "token_epoch", "timezone", "created_at",
             "confirmation_requested_at", "pending_confirmations", "soft_bounce_count"],
            select(
                bindparam("email", type_=String), bindparam("name", type_=String),
                frequency.cast(Subscriber.frequency.type),
                _constant(SubscriberStatus.PENDING, Subscriber.status), literal_column("1"),
                bindparam("timezone", type_=String), now, now, literal_column("1"), literal_column("0"),
            ).where(every_topic_found),
        )
        .on_conflict_do_nothing(index_elements=[Subscriber.email])
        .returning(Subscriber.id)
        .cte("new_reader")
    )
    asked = (
        postgresql.insert(Subscription)
        .from_select(
            ["subscriber_id", "topic_id", "status", "created_at"],
            select(new_reader.c.id, wanted.c.id, _constant(SubscriptionStatus.PENDING, Subscription.status),
                   now).select_from(new_reader).join(wanted, literal_column("true")),
        )
        .returning(Subscription.id)
        .cte("asked")
    )
    consent = postgresql.insert(ConsentRecord).from_select(
        ["subscription_id", "requested_at", *_CONSENT_FIELDS],
        select(asked.c.id, now, *(bindparam(f"consent_{key}", type_=String) for key in _CONSENT_FIELDS))
        .where(bindparam("record_consent")),
    ).cte("consent")
    confirmation = (
        postgresql.insert(Delivery)
        .from_select(
            ["kind", "subscriber_id", "state", "attempts", "created_at", "updated_at", "next_attempt_at"],
            select(_constant(DeliveryKind.CONFIRMATION, Delivery.kind), new_reader.c.id,
                   _constant(DeliveryState.QUEUED, Delivery.state), literal_column("0"), now, now, now),
        )
        .returning(Delivery.id)
        .cte("confirmation")
    )
    return select(
        select(new_reader.c.id).scalar_subquery().label("subscriber_id"),
        select(confirmation.c.id).scalar_subquery().label("delivery_id"),
    ).add_cte(consent)


_STATEMENT = FixedStatement(_statement)


def _constant(value: object, column):  # type: ignore[no-untyped-def]
    """A bound constant typed like ``column``, so enums are stored the way the ORM stores them."""
    return bindparam(None, value, type_=column.type)
