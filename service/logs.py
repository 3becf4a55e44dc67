"""Logging: one line per event, JSON in production, with a request id that follows a
subscription from the web request into the Celery task that sends its email."""

from __future__ import annotations

import json
import logging
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

from celery import Task
from celery.signals import before_task_publish, task_postrun, task_prerun

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)
_VALID_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


def new_request_id(offered: str | None) -> str:
    """The caller's X-Request-ID when it is a sane token, else a fresh one."""
    return offered if offered and _VALID_ID.fullmatch(offered) else uuid.uuid4().hex


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get() or "-"
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", "-"),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(level: str, as_json: bool) -> None:
    """Set up the root logger once per process (create_app may run several times in tests)."""
    root = logging.getLogger()
    root.setLevel(level)
    if any(getattr(handler, "_newsletter", False) for handler in root.handlers):
        return
    handler = logging.StreamHandler()
    handler._newsletter = True  # type: ignore[attr-defined]
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter() if as_json else logging.Formatter(
        "%(asctime)s %(levelname)s %(name)s [%(request_id)s]: %(message)s"))
    root.addHandler(handler)


@contextmanager
def logged_under(request_id: str) -> Iterator[None]:
    """Log as if handling this request (a task that does the work of several)."""
    token = request_id_var.set(request_id)
    try:
        yield
    finally:
        request_id_var.reset(token)


# Celery's signals are connected here, where every process that builds the app
# (web, worker, beat) imports this module.
@before_task_publish.connect
def _carry_request_id(headers: dict[str, Any] | None = None, **_: Any) -> None:
    """Tasks published while handling a request (or another task) carry its id along."""
    rid = request_id_var.get()
    if rid and headers is not None:
        headers.setdefault("request_id", rid)


@task_prerun.connect
def _adopt_request_id(task: Task | None = None, task_id: str | None = None, **_: Any) -> None:
    rid = None
    if task is not None:
        rid = task.request.get("request_id") or (task.request.headers or {}).get("request_id")
    request_id_var.set(rid or task_id)


@task_postrun.connect
def _forget_request_id(**_: Any) -> None:
    request_id_var.set(None)
