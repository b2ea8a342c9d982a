"""Queue controls shared by the whole fleet: pause/resume and limits.

A queue's controls live in the ``queues`` table, not in any worker's memory,
so every worker on every host honours the same pause and the same limits.
Changes are announced on the control channel, so workers apply them at once;
workers also re-read them every second in case they missed the NOTIFY.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import psycopg

from jobqueue import sql
from jobqueue.errors import JobQueueError

if TYPE_CHECKING:
    from jobqueue.app import JobQueue

SETTINGS_CHANGED = "settings"
_CANCEL_PREFIX = "cancel:"


def cancel_message(job_id: int) -> str:
    return f"{_CANCEL_PREFIX}{job_id}"


def parse_cancel(message: str) -> int | None:
    """The job id of a cancel message, or None for any other control message."""
    if message.startswith(_CANCEL_PREFIX) and message[len(_CANCEL_PREFIX):].isdigit():
        return int(message[len(_CANCEL_PREFIX):])
    return None


@dataclass(frozen=True)
class QueueSettings:
    name: str
    paused: bool = False
    max_running: int | None = None
    rate_limit: int | None = None
    rate_period: float | None = None

    @property
    def limited(self) -> bool:
        return self.max_running is not None or self.rate_limit is not None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class QueueControls:
    """``app.queues``: pause, resume and limit queues fleet-wide."""

    def __init__(self, app: JobQueue) -> None:
        self.app = app

    def _announce(self, conn: psycopg.Connection[Any]) -> None:
        conn.execute(sql.query("notify", self.app.schema),
                     {"channel": self.app.settings.control_channel,
                      "message": SETTINGS_CHANGED})

    def _apply(self, name: str, params: dict[str, Any], conn: Any) -> None:
        def run(c: psycopg.Connection[Any]) -> None:
            c.execute(sql.query(name, self.app.schema), params)
            self._announce(c)

        self.app._run_sync(conn, run)

    def pause(self, queue: str, *, conn: Any = None) -> None:
        """Stop every worker from claiming from ``queue`` (running jobs finish)."""
        self._apply("queue_set_paused", {"queue": queue, "paused": True}, conn)

    def resume(self, queue: str, *, conn: Any = None) -> None:
        self._apply("queue_set_paused", {"queue": queue, "paused": False}, conn)

    def set_limits(self, queue: str, *, max_running: int | None = None,
                   rate_limit: int | None = None, rate_period: float | None = None,
                   conn: Any = None) -> None:
        """Fleet-wide limits: at most ``max_running`` at once; at most ``rate_limit``
        claims per ``rate_period`` seconds (fixed windows). None clears a limit."""
        if max_running is not None and max_running < 1:
            raise JobQueueError("max_running must be >= 1 (or None for no limit)")
        if (rate_limit is None) != (rate_period is None):
            raise JobQueueError("rate_limit and rate_period go together")
        if rate_limit is not None and (rate_limit < 1 or rate_period is None or rate_period <= 0):
            raise JobQueueError("rate_limit must be >= 1 per a period > 0 seconds")
        self._apply("queue_set_limits", {"queue": queue, "max_running": max_running,
                                         "rate_limit": rate_limit, "rate_period": rate_period},
                    conn)

    def settings(self, queues: list[str] | None = None, *,
                 conn: Any = None) -> list[QueueSettings]:
        def run(c: psycopg.Connection[Any]) -> list[QueueSettings]:
            rows = c.execute(sql.query("queue_settings", self.app.schema),
                             {"queues": queues}).fetchall()
            return [QueueSettings(*row) for row in rows]

        return self.app._run_sync(conn, run)
