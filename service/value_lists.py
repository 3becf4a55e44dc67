"""``column IN (a list of values)`` that keeps one statement text whatever the list's length.

SQLAlchemy renders ``in_()`` with one bound parameter per value, so a group of
50 deliveries and a group of 49 are two statements, each compiled apart. And
psycopg parses and caches a statement's text only up to 50 parameters: above
that it parses the text anew at every execution (a group's claim has 55). On
PostgreSQL ``column = ANY(%s)`` with the list as one array parameter is the
same test with one statement text for every length. Other databases (SQLite:
the embedded default, the tests) keep ``IN``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import ColumnElement, any_, bindparam
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Session


def among(session: Session, column: ColumnElement[Any], values: Iterable[Any]) -> ColumnElement[bool]:
    """``column`` is one of ``values``, in the form the session's database handles best."""
    values = list(values)
    if session.get_bind().dialect.name == "postgresql":
        return column == any_(bindparam(None, values, type_=ARRAY(column.type)))
    return column.in_(values)
