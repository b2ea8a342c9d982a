"""Queue controls shared by the whole fleet: pause/resume, limits and backpressure.

A queue's controls live in the ``queues`` table, not in any worker's memory,
so every worker on every host honours the same pause and the same limits.
Changes are announced on the control channel, so workers apply them at once;
workers also re-read them every second in case they missed the NOTIFY.
``max_ready`` is the producers' (enqueue checks it, see
:mod:`jobqueue.backpressure`); this app's producers see a change at once,
others within ``BACKPRESSURE_TTL``.
"""

from __future__ import annotations

from typing import Any

from jobqueue.backpressure import Backpressure
from jobqueue.db import admin, jobs
from jobqueue.db.store import Store
from jobqueue.errors import JobQueueError
from jobqueue.protocol import control_channel
from jobqueue.rows import QueueSettings


class QueueControls:
    """``app.queues``: pause, resume and limit queues fleet-wide."""

    def __init__(self, store: Store, backpressure: Backpressure | None = None) -> None:
        self.store = store
        self.backpressure = backpressure

    def _apply(self, statement: str, params: dict[str, Any], conn: Any) -> None:
        self.store.run(admin.set_queue(statement, params, control_channel(self.store.schema)),
                       conn)

    def pause(self, queue: str, *, conn: Any = None) -> None:
        """Stop every worker from claiming from ``queue`` (running jobs finish)."""
        self._apply("queue_set_paused", {"queue": queue, "paused": True}, conn)

    def resume(self, queue: str, *, conn: Any = None) -> None:
        self._apply("queue_set_paused", {"queue": queue, "paused": False}, conn)

    def set_limits(self, queue: str, *, max_running: int | None = None,
                   rate_limit: int | None = None, rate_period: float | None = None,
                   max_ready: int | None = None, reject_when_full: bool = False,
                   conn: Any = None) -> None:
        """Fleet-wide limits: at most ``max_running`` at once; at most ``rate_limit``
        claims per ``rate_period`` seconds (fixed windows); backpressure once
        ``max_ready`` jobs are ready: enqueue raises QueueFull with
        ``reject_when_full``, else warns and counts. None clears a limit, and every
        call sets them all: what it does not give is cleared."""
        if max_running is not None and max_running < 1:
            raise JobQueueError("max_running must be >= 1 (or None for no limit)")
        if (rate_limit is None) != (rate_period is None):
            raise JobQueueError("rate_limit and rate_period go together")
        if rate_limit is not None and (rate_limit < 1 or rate_period is None or rate_period <= 0):
            raise JobQueueError("rate_limit must be >= 1 per a period > 0 seconds")
        if max_ready is not None and max_ready < 1:
            raise JobQueueError("max_ready must be >= 1 (or None for no limit)")
        if reject_when_full and max_ready is None:
            raise JobQueueError("reject_when_full needs max_ready (the limit it enforces)")
        self._apply("queue_set_limits", {"queue": queue, "max_running": max_running,
                                         "rate_limit": rate_limit, "rate_period": rate_period,
                                         "max_ready": max_ready,
                                         "reject_when_full": reject_when_full}, conn)
        if self.backpressure is not None:
            self.backpressure.invalidate()

    def settings(self, queues: list[str] | None = None, *,
                 conn: Any = None) -> list[QueueSettings]:
        found: list[QueueSettings] = self.store.run(jobs.queue_settings(queues), conn)
        return found
