"""The progress writer: running jobs' ``ctx.progress()``, throttled into Postgres.

A handler may report progress in a tight loop; each report only replaces the
job's latest value in memory (from any thread). Every ``interval`` the writer
sends the latest value of each job that reported since, all in one statement,
guarded like an ack (this worker, this attempt) and announced by NOTIFY to
those who wait for the job. However often handlers call it, the worker writes
progress at most ``1 / interval`` times a second; a job's final value goes
with its ack instead (see ``Outcome.progress``), so it is never lost to the
throttle.
"""

from __future__ import annotations

import threading
from typing import Any

from jobqueue.config import DEFAULT_PROGRESS_INTERVAL
from jobqueue.db import jobs
from jobqueue.db.store import AsyncStore
from jobqueue.errors import DatabaseError
from jobqueue.protocol import progress_channel
from jobqueue.tasks import JobContext
from jobqueue.worker.service import Service


class ProgressWriter(Service):
    name = "progress"

    def __init__(self, store: AsyncStore, worker_id: str, log: Any, *,
                 interval: float = DEFAULT_PROGRESS_INTERVAL) -> None:
        super().__init__()
        self.store = store
        self.worker_id = worker_id
        self.log = log
        self.interval = interval
        self.channel = progress_channel(store.schema)
        self.writes = 0
        # Sync handlers report from pool threads: the dict is swapped under a lock.
        self._lock = threading.Lock()
        self._latest: dict[int, tuple[int, str]] = {}

    def report(self, ctx: JobContext) -> None:
        """A handler's ``ctx.progress()``: keep the latest value (any thread)."""
        if ctx.last_progress is None:
            return
        with self._lock:
            self._latest[ctx.id] = (ctx.attempt, ctx.last_progress)

    def forget(self, job_id: int) -> None:
        """The job finished: its last value rides with its outcome."""
        with self._lock:
            self._latest.pop(job_id, None)

    async def run(self) -> None:
        while not self.stopping:
            await self.sleep(self.interval)
            await self.flush()

    async def flush(self) -> None:
        with self._lock:
            latest, self._latest = self._latest, {}
        if not latest:
            return
        try:
            await self.store.run(jobs.record_progress(
                [(job_id, attempt, value) for job_id, (attempt, value) in latest.items()],
                self.worker_id, self.channel))
            self.writes += 1
        except DatabaseError as exc:
            # Progress is advisory: the next report (or the ack) carries it.
            self.log.warning("progress.write_failed", error=str(exc), jobs=len(latest))
