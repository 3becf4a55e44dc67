"""Statements over a list of values that keep one text whatever the list's length.

``among``: ``column IN (a list of values)``. ``update_each``: many rows updated by key,
each with values of its own.

SQLAlchemy renders ``in_()`` with one bound parameter per value, so a group of
50 deliveries and a group of 49 are two statements, each compiled apart. And
psycopg parses and caches a statement's text only up to 50 parameters: above
that it parses the text anew at every execution (a group's claim has 55). On
PostgreSQL ``column = ANY(%s)`` with the list as one array parameter is the
same test with one statement text for every length. Other databases (SQLite:
the embedded default, the tests) keep ``IN``.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import ColumnElement, String, Table, TextClause, Update, any_, bindparam, text, update
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Session
from sqlalchemy.types import TypeEngine


def among(session: Session, column: ColumnElement[Any], values: Iterable[Any]) -> ColumnElement[bool]:
    """``column`` is one of ``values``, in the form the session's database handles best."""
    values = list(values)
    if session.get_bind().dialect.name == "postgresql":
        return column == any_(bindparam(None, values, type_=ARRAY(column.type)))
    return column.in_(values)


def update_each(session: Session, table: Table, key: str, rows: Sequence[Mapping[str, Any]]) -> None:
    """``UPDATE table SET ... WHERE key = ...`` for each row; every row has the same columns.

    On PostgreSQL one statement updates them all, each column's values passed as
    one array and joined back with ``unnest``: PostgreSQL plans and runs one
    statement instead of one per row, and nothing is done per row in Python but
    the columns' own conversions. Elsewhere an executemany.
    """
    if not rows:
        return
    columns = tuple(name for name in rows[0] if name != key)
    dialect = session.get_bind().dialect
    if dialect.name != "postgresql":
        session.execute(_update_by_key(table, key, columns), [
            {"_key": row[key], **{name: row[name] for name in columns}} for row in rows])
        return
    arrays: dict[str, list[Any]] = {}
    for name in (key, *columns):
        convert = table.c[name].type.bind_processor(dialect)
        values = [row[name] for row in rows]
        arrays[name] = [convert(value) for value in values] if convert else values
    session.execute(_update_from_arrays(table, key, columns), arrays)


@functools.cache
def _update_by_key(table: Table, key: str, columns: tuple[str, ...]) -> Update:
    return (update(table)
            .where(table.c[key] == bindparam("_key"))
            .values({name: bindparam(name, type_=table.c[name].type) for name in columns}))


def _element_type(column_type: TypeEngine[Any]) -> str:
    # Strings as TEXT: a cast to VARCHAR(n) would cut a value too long for the column
    # silently, where assigning it fails as a plain UPDATE would.
    if isinstance(column_type, String):
        return "TEXT"
    return column_type.compile(dialect=postgresql.dialect())


@functools.cache
def _update_from_arrays(table: Table, key: str, columns: tuple[str, ...]) -> TextClause:
    names = (key, *columns)
    arrays = ", ".join(f"CAST(:{name} AS {_element_type(table.c[name].type)}[])" for name in names)
    assignments = ", ".join(f"{name} = arrays.{name}" for name in columns)
    return text(f"UPDATE {table.name} SET {assignments} FROM unnest({arrays}) AS arrays({', '.join(names)}) "
                f"WHERE {table.name}.{key} = arrays.{key}")
