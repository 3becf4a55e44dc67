"""A statement whose SQL never changes, compiled once and run on the pool's own driver connection.

The form's new-reader statement is the one statement of a form post. Through
SQLAlchemy's Connection it costs about twice the CPU it costs on the driver's
cursor (docs/benchmarks.md, "Session 9"): a Connection and a Transaction object,
an execution context, the compiled-cache lookup, parameter processing and a
result wrapper, and the isolation level set and reset around it. Here it is
compiled once per dialect with SQLAlchemy's public compiler API; each run
applies each parameter's bind processor (so enums and UTC datetimes are stored
as the ORM stores them), checks a pooled connection out of the engine's pool,
and runs the SQL on its driver cursor in autocommit mode.

What SQLAlchemy would do with a driver error is kept: it is raised as
SQLAlchemy's exception of the same kind (``OperationalError``, ``IntegrityError``
…), whether connecting or executing failed; after a lost connection the pool
replaces it and every connection opened before it, and the web tier answers
503 as for any lost connection. Whatever fails, the connection goes back to the
pool out of autocommit mode, or is discarded.

Only for statements without result types to apply: rows come back as the
driver's tuples. Engine events (``before_cursor_execute``, ``handle_error``) do
not see them.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Executable
from sqlalchemy.engine import Dialect, Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, scoped_session
from sqlalchemy.pool import PoolProxiedConnection
from sqlalchemy.sql.compiler import SQLCompiler


@dataclass(frozen=True)
class _Compiled:
    sql: str
    constants: dict[str, Any]  # the statement's own values, already processed
    processors: dict[str, Callable[[Any], Any] | None]  # of the values the caller gives, by name

    def values(self, given: Mapping[str, Any]) -> dict[str, Any]:
        if given.keys() != self.processors.keys():
            missing, unknown = self.processors.keys() - given.keys(), given.keys() - self.processors.keys()
            raise KeyError(f"parameters missing: {sorted(missing)}; unknown: {sorted(unknown)}")
        values = dict(self.constants)
        for name, value in given.items():
            process = self.processors[name]
            values[name] = value if process is None or value is None else process(value)
        return values


class FixedStatement:
    """``build()``'s statement, built on first use and compiled once per dialect."""

    def __init__(self, build: Callable[[], Executable]) -> None:
        self._build = build
        self._statement: Executable | None = None
        self._compiled: weakref.WeakKeyDictionary[Dialect, _Compiled] = weakref.WeakKeyDictionary()

    @property
    def statement(self) -> Executable:
        if self._statement is None:
            self._statement = self._build()
        return self._statement

    def compiled_for(self, dialect: Dialect) -> _Compiled:
        compiled = self._compiled.get(dialect)
        if compiled is None:
            compiled = self._compiled[dialect] = _compile(self.statement, dialect)
        return compiled


def _compile(statement: Executable, dialect: Dialect) -> _Compiled:
    compiled = statement.compile(dialect=dialect)
    assert isinstance(compiled, SQLCompiler)
    if compiled.positional or compiled.escaped_bind_names or compiled.literal_execute_params \
            or compiled.post_compile_params:
        raise ValueError("a fixed statement takes named parameters only, none rendered at execution")
    constants: dict[str, Any] = {}
    processors: dict[str, Callable[[Any], Any] | None] = {}
    for name, bind in compiled.binds.items():
        process = bind.type.dialect_impl(dialect).bind_processor(dialect)
        if bind.required:
            processors[name] = process
        else:
            value = bind.effective_value
            constants[name] = value if process is None or value is None else process(value)
    return _Compiled(compiled.string, constants, processors)


def execute_fixed_alone(session: Session | scoped_session[Session], fixed: FixedStatement,
                        parameters: Mapping[str, Any]) -> list[tuple[Any, ...]]:
    """Run ``fixed`` on a pooled connection of its own in autocommit mode; the driver's rows.

    Only when ``service.autocommit.can_commit_alone(session)``.
    """
    engine = session.get_bind()
    dialect = engine.dialect
    compiled = fixed.compiled_for(dialect)
    values = compiled.values(parameters)
    pooled = _checkout(engine)
    driver = pooled.driver_connection
    cursor = None
    try:
        driver.autocommit = True
        cursor = pooled.cursor()
        cursor.execute(compiled.sql, values)
        rows = cursor.fetchall()
        driver.autocommit = False  # as the pool's other users expect it
        return rows
    except dialect.loaded_dbapi.Error as error:
        lost = dialect.is_disconnect(error, driver, cursor)
        if lost:
            # As SQLAlchemy does on a disconnect: the server is likely gone for every connection
            # opened before this one, so each is replaced at its next checkout (Pool._invalidate).
            engine.pool._invalidate(pooled, error)
        elif not _leave_autocommit(driver, dialect):
            pooled.invalidate(error)
        raise DBAPIError.instance(compiled.sql, values, error, dialect.loaded_dbapi.Error,
                                  hide_parameters=engine.hide_parameters,
                                  connection_invalidated=lost, dialect=dialect) from error
    except Exception as error:  # not the driver's (a value it cannot encode): the connection is fine
        if not _leave_autocommit(driver, dialect):
            pooled.invalidate(error)
        raise
    except BaseException as error:  # an interrupt, mid-statement: its state is unknown
        pooled.invalidate(error)
        raise
    finally:
        pooled.close()  # back to the pool, or discarded if invalidated


def _checkout(engine: Engine) -> PoolProxiedConnection:
    """A pooled connection; failing to connect raises SQLAlchemy's error, as Connection does."""
    dialect = engine.dialect
    try:
        return engine.raw_connection()
    except dialect.loaded_dbapi.Error as error:
        raise DBAPIError.instance(None, None, error, dialect.loaded_dbapi.Error,
                                  hide_parameters=engine.hide_parameters,
                                  connection_invalidated=dialect.is_disconnect(error, None, None),
                                  dialect=dialect) from error


def _leave_autocommit(driver: Any, dialect: Dialect) -> bool:
    """Back to transactions after a failed statement; False if the connection will not."""
    try:
        driver.autocommit = False
    except dialect.loaded_dbapi.Error:
        return False
    return True
