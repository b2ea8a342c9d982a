"""The dead-jobs workflow: list, inspect, replay and purge what could not succeed.

Dead jobs are never purged automatically. A replay inserts a fresh job
(attempts reset, ``replay_of`` pointing back) and marks the dead row with when
and as which job it was replayed, so the audit trail survives the replay.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import psycopg

from jobqueue import sql
from jobqueue.errors import JobQueueError

if TYPE_CHECKING:
    from jobqueue.app import JobQueue

REPLAY_BATCH = 500


class NoSelectorError(JobQueueError):
    """A replay or purge named no jobs: refuse rather than act on everything."""


@dataclass(frozen=True)
class DeadFilter:
    """Which dead jobs a command acts on; every field narrows the selection."""

    ids: tuple[int, ...] = ()
    task: str | None = None
    queue: str | None = None
    reason: str | None = None
    error: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    older_than: float | None = None  # seconds since died_at
    include_replayed: bool = False
    all: bool = False  # explicit "every dead job" for replay and purge

    @property
    def selects_something(self) -> bool:
        return self.all or any(
            (self.ids, self.task, self.queue, self.reason, self.error, self.since, self.until,
             self.older_than is not None))

    def params(self) -> dict[str, Any]:
        return {
            "ids": list(self.ids) or None,
            "task": self.task,
            "queue": self.queue,
            "reason": self.reason,
            "error": self.error,
            "since": self.since,
            "until": self.until,
            "older_than": self.older_than,
            "include_replayed": self.include_replayed,
        }


@dataclass(frozen=True)
class DeadJobSummary:
    id: int
    queue: str
    task: str
    reason: str
    attempts: int
    died_at: datetime
    last_error_type: str | None
    last_error: str | None
    replay_count: int
    replayed_at: datetime | None
    replayed_as: int | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class DeadJob:
    id: int
    queue: str
    task: str
    args: dict[str, Any]
    priority: int
    run_at: datetime
    attempts: int
    max_attempts: int
    unique_key: str | None
    cron_name: str | None
    replay_of: int | None
    created_at: datetime
    died_at: datetime
    reason: str
    errors: list[dict[str, Any]]
    replay_count: int
    replayed_at: datetime | None
    replayed_as: int | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ReplayResult:
    replayed: dict[int, int] = field(default_factory=dict)  # dead id -> new job id
    skipped: int = 0  # selected but not replayed (their unique_key is live again)


class DeadJobs:
    """``app.dead``: the dead-jobs API of one JobQueue."""

    def __init__(self, app: JobQueue) -> None:
        self.app = app

    def _q(self, name: str) -> psycopg.sql.Composed:
        return sql.query(name, self.app.schema)

    def list(self, where: DeadFilter | None = None, *, limit: int = 50,
             conn: Any = None) -> list[DeadJobSummary]:
        params = {**(where or DeadFilter()).params(), "limit": limit}
        return self.app._run_sync(conn, lambda c: [
            DeadJobSummary(*row) for row in c.execute(self._q("dead_list"), params).fetchall()])

    def count(self, where: DeadFilter | None = None, *, conn: Any = None) -> int:
        params = (where or DeadFilter()).params()

        def run(c: psycopg.Connection[Any]) -> int:
            row = c.execute(self._q("dead_count"), params).fetchone()
            return int(row[0]) if row else 0

        return self.app._run_sync(conn, run)

    def get(self, job_id: int, *, conn: Any = None) -> DeadJob | None:
        def run(c: psycopg.Connection[Any]) -> DeadJob | None:
            row = c.execute(self._q("dead_show"), {"id": job_id}).fetchone()
            return DeadJob(*row) if row else None

        return self.app._run_sync(conn, run)

    def replay(self, where: DeadFilter, *, batch_size: int = REPLAY_BATCH,
               conn: Any = None) -> ReplayResult:
        """Re-enqueue the selected dead jobs, ``batch_size`` per transaction.

        With ``conn`` everything happens in the caller's transaction instead.
        """
        if not where.selects_something:
            raise NoSelectorError("name the dead jobs to replay (ids, filters) or pass all")
        params = {**where.params(), "limit": batch_size, "after_id": 0,
                  "channel": self.app.settings.channel}
        result = ReplayResult()

        def one_batch(c: psycopg.Connection[Any]) -> int:
            rows = c.execute(self._q("dead_replay"), params).fetchall()
            picked = int(rows[0][2]) if rows else 0
            if picked:
                params["after_id"] = int(rows[0][3])
            done = {int(r[0]): int(r[1]) for r in rows if r[0] is not None}
            result.replayed.update(done)
            result.skipped += picked - len(done)
            return picked

        while True:
            if conn is not None:
                picked = self.app._run_sync(conn, one_batch)
            else:
                with self.app.connect() as own:  # one transaction per batch
                    picked = one_batch(own)
            if picked < batch_size:
                return result

    def purge(self, where: DeadFilter, *, conn: Any = None) -> int:
        """Delete the selected dead jobs for good; returns how many."""
        if not where.selects_something:
            raise NoSelectorError("name the dead jobs to purge (ids, filters) or pass all")
        params = where.params()
        return self.app._run_sync(
            conn, lambda c: len(c.execute(self._q("dead_purge"), params).fetchall()))
