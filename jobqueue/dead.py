"""The dead-jobs workflow: list, inspect, replay and purge what could not succeed.

Dead jobs are never purged automatically. A replay inserts a fresh job
(attempts reset, ``replay_of`` pointing back) and marks the dead row with when
and as which job it was replayed, so the audit trail survives the replay.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from jobqueue.db import admin
from jobqueue.db.store import Store
from jobqueue.errors import JobQueueError
from jobqueue.protocol import job_channel
from jobqueue.rows import DeadJob, DeadJobSummary, ReplayedRow

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


@dataclass
class ReplayResult:
    replayed: dict[int, int] = field(default_factory=dict)  # dead id -> new job id
    skipped: int = 0  # selected but not replayed (their unique_key is live again)
    #: Workflow nodes that had died of a replayed node and wait again (same ids).
    revived: list[int] = field(default_factory=list)

    def add(self, batch: list[ReplayedRow]) -> int:
        """Count one batch in; how many dead rows it picked."""
        picked = batch[0].picked if batch else 0
        done = {r.dead_id: r.job_id for r in batch
                if r.dead_id is not None and r.job_id is not None}
        self.replayed.update(done)
        self.skipped += picked - len(done)
        return picked


class DeadJobs:
    """``app.dead``: the dead-jobs API of one queue, over its Store."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def list(self, where: DeadFilter | None = None, *, limit: int = 50,
             conn: Any = None) -> list[DeadJobSummary]:
        result: list[DeadJobSummary] = self.store.run(
            admin.dead_list((where or DeadFilter()).params(), limit), conn)
        return result

    def count(self, where: DeadFilter | None = None, *, conn: Any = None) -> int:
        return int(self.store.run(admin.dead_count((where or DeadFilter()).params()), conn)
                   or 0)

    def get(self, job_id: int, *, conn: Any = None) -> DeadJob | None:
        found: DeadJob | None = self.store.run(admin.dead_show(job_id), conn)
        return found

    def replay(self, where: DeadFilter, *, batch_size: int = REPLAY_BATCH,
               conn: Any = None) -> ReplayResult:
        """Re-enqueue the selected dead jobs, ``batch_size`` per transaction.

        With ``conn`` everything happens in the caller's transaction instead. A
        dead job whose unique_key is held by a live job again is skipped (it
        stays dead, unmarked).
        """
        if not where.selects_something:
            raise NoSelectorError("name the dead jobs to replay (ids, filters) or pass all")
        params, result = where.params(), ReplayResult()
        after_id = 0
        while True:
            # Without conn each batch runs on a pooled connection: one transaction each.
            batch, revived = self.store.run(admin.dead_replay_batch(
                params, after_id, batch_size, job_channel(self.store.schema)), conn)
            result.revived += revived
            picked = result.add(batch)
            if picked:
                after_id = max(after_id, batch[0].last_id or after_id)
            if picked < batch_size:
                return result

    def would_revive(self, ids: Sequence[int], *, conn: Any = None) -> Sequence[int]:
        """The dead workflow nodes a replay of ``ids`` would bring back (dry run)."""
        found = self.store.run(admin.doomed_by([*ids]), conn)
        return [r.id for r in found]

    def purge(self, where: DeadFilter, *, conn: Any = None) -> int:
        """Delete the selected dead jobs for good; returns how many."""
        if not where.selects_something:
            raise NoSelectorError("name the dead jobs to purge (ids, filters) or pass all")
        return len(self.store.run(admin.dead_purge(where.params()), conn))
