"""Publish the confirmation sends of form posts from a thread, several per task under load.

A Celery publish costs a web process more CPU than storing the subscription
does (kombu builds a Redis client per publish), and the request would wait for
it. Instead a post hands its delivery ids to this process's publisher and
answers; a thread publishes what gathers within ``LINGER_SECONDS`` of the first
as one task. A reader's email leaves up to a quarter of a second later than it
would have; under load, one publish carries many confirmations, and the worker
sends them over one connection with one claim and one record per group: a task
of 5 costs the worker about twice the CPU a confirmation of a task of 20
(bench/confirm_cpu.py).

Each delivery keeps the id of the request that made it, so the worker logs its
outcome under that id (``send_delivery_batch``).

Nothing is lost if the process dies with ids still in hand: the rows are
committed before they get here, and the sweep publishes any delivery whose
task never came (``DELIVERY_STALE_SECONDS``). For the same reason, while the
broker is down the thread drops what is queued rather than let it pile up.
"""

from __future__ import annotations

import atexit
import logging
import os
import queue
import threading
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

from flask import current_app

from service.logs import request_id_var
from tasks.delivery import publish_batches

if TYPE_CHECKING:
    from flask import Flask

log = logging.getLogger(__name__)

# How long the thread waits for more ids after the first, when posts keep coming. At 0.05 s
# a web process's tasks carried 5 or so under load, and the worker drained half as fast.
LINGER_SECONDS = 0.25
MAX_IDS_PER_TASK = 200


class BackgroundPublisher:
    """One per web process; its thread starts on first use, again after a fork, and again
    if it has stopped."""

    def __init__(self, app: Flask) -> None:
        self._app = app
        # (delivery id, the id of the request that made it), or None to stop.
        self._ids: queue.SimpleQueue[tuple[int, str | None] | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._owner_pid = 0

    def submit(self, delivery_ids: Iterable[int]) -> None:
        """Publish these committed deliveries soon; never raises for the broker's sake."""
        ids = list(delivery_ids)
        if not ids:
            return
        try:
            self._ensure_thread()
        except RuntimeError as error:  # can't start a thread: the rows are stored, the sweep sends
            log.warning("no publisher thread (%s); %d confirmation(s) left for the sweep", error, len(ids))
            return
        request_id = request_id_var.get()
        for delivery_id in ids:
            self._ids.put((delivery_id, request_id))

    def close(self, timeout: float = 10.0) -> None:
        """Publish what is left and stop the thread (at interpreter exit)."""
        thread = self._thread
        if thread is None or not thread.is_alive() or self._owner_pid != os.getpid():
            return
        self._ids.put(None)
        thread.join(timeout)

    def _running_here(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and self._owner_pid == os.getpid()

    def _ensure_thread(self) -> None:
        if self._running_here():
            return
        with self._lock:
            if self._running_here():
                return
            if self._owner_pid != os.getpid():
                # A forked child (a web server's worker, a Celery prefork process) inherits the
                # object but not the thread, and the parent's queued ids are the parent's to publish.
                self._ids = queue.SimpleQueue()
                self._owner_pid = os.getpid()
                atexit.register(self.close)
            self._thread = threading.Thread(target=self._run, name="confirmation-publisher", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        stopping = False
        while not stopping:
            first = self._ids.get()
            if first is None:
                break
            if self._ids.qsize() < MAX_IDS_PER_TASK - 1:
                # The next moment's posts queue up meanwhile without waking this thread: a
                # wake-up per post cost the request threads the GIL and a context switch each.
                time.sleep(LINGER_SECONDS)
            batch, stopping = self._take_queued([first])
            if not self._publish(batch):
                # The broker is down: what is queued would only wait for it and pile up.
                dropped, stopping = self._drop_queued(stopping)
                if dropped:
                    log.warning("broker unavailable: %d more confirmation(s) left for the sweep", dropped)

    def _publish(self, batch: list[tuple[int, str | None]]) -> bool:
        delivery_ids = [delivery_id for delivery_id, _ in batch]
        request_ids = [request_id for _, request_id in batch]
        try:
            with self._app.app_context():
                published = publish_batches(delivery_ids, MAX_IDS_PER_TASK,
                                            request_ids if any(request_ids) else None)
        except Exception:
            log.exception("publishing %d confirmation(s) failed; left for the sweep", len(batch))
            return False
        return published == len(delivery_ids)

    def _take_queued(self, batch: list[tuple[int, str | None]]) -> tuple[list[tuple[int, str | None]], bool]:
        """``batch`` and what is queued, up to a task's worth; and whether a stop came with it."""
        while len(batch) < MAX_IDS_PER_TASK:
            try:
                item = self._ids.get_nowait()
            except queue.Empty:
                break
            if item is None:
                return batch, True
            batch.append(item)
        return batch, False

    def _drop_queued(self, stopping: bool) -> tuple[int, bool]:
        dropped = 0
        while True:
            try:
                item = self._ids.get_nowait()
            except queue.Empty:
                return dropped, stopping
            if item is None:
                stopping = True
            else:
                dropped += 1


def publish_soon(delivery_ids: Iterable[int]) -> None:
    """Hand committed deliveries to this process's publisher (see the module's docstring)."""
    current_app.extensions["publisher"].submit(delivery_ids)
