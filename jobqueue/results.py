"""Results and history: what became of a job, and waiting for it to end.

``job(id)`` reads a job wherever it is (live, dead or in history) as a
:class:`~jobqueue.rows.JobInfo`; an id that none of them holds raises
:class:`~jobqueue.JobNotFound`, never a made-up "pending".

``result(id, timeout=...)`` waits for the outcome without polling: it LISTENs
first, then flags the job as awaited (only awaited jobs cost a NOTIFY when
they finish), then reads the job, and reads it again only when a notification
names it. In that order no outcome can slip between the read and the wait:
an ack that commits before the flag leaves the job finished for the read to
see, one after it notifies. Behind a transaction pooler without a
``listen_dsn`` there is no session to LISTEN on, and it polls instead.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from jobqueue.config import Settings
from jobqueue.db import history
from jobqueue.db.store import AsyncStore, Store
from jobqueue.errors import JobFailed, JobNotFound
from jobqueue.protocol import outcome_channel, parse_ids, progress_channel
from jobqueue.rows import HistoryEntry, JobInfo, Progress, RunningJob

#: Even with LISTEN, read the job again this often (seconds): a notification
#: cannot be lost on a live session, but a cheap re-read bounds any surprise.
RECHECK = 5.0
#: Behind a transaction pooler without listen_dsn: the poll interval (seconds).
POLL = 0.2

ProgressCallback = Callable[[Progress], Any]


def settle(info: JobInfo) -> Any:
    """The value of a finished job: its result, or JobFailed."""
    if info.state == "succeeded":
        return info.result
    raise JobFailed(info.id, info.reason or info.state, info.last_error, info.errors)


class _Waiting:
    """The bookkeeping of one wait, shared by the sync and async faces."""

    def __init__(self, job_id: int, timeout: float | None,
                 on_progress: ProgressCallback | None) -> None:
        self.job_id = job_id
        self.timeout = timeout
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.on_progress = on_progress
        self.finished_seen = False  # an outcome notification named the job
        self.progress_at: Any = None
        self.state = "unknown"

    def look(self, info: JobInfo | None) -> tuple[bool, Any]:
        """(True, value) once the job has ended; raises for dead or gone."""
        if info is None:
            if self.finished_seen:
                raise JobNotFound(self.job_id, f"job {self.job_id} succeeded, but its task "
                                               "keeps no history, so it has no result")
            raise JobNotFound(self.job_id)
        self.state = info.state
        if info.finished:
            return True, settle(info)
        report = info.report
        if self.on_progress is not None and report is not None and report.at != self.progress_at:
            self.progress_at = report.at
            self.on_progress(report)
        return False, None

    def remaining(self) -> float:
        """Seconds left; TimeoutError once none are."""
        if self.deadline is None:
            return RECHECK
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"job {self.job_id} did not finish within {self.timeout:g}s "
                               f"(it is {self.state})")
        return min(left, RECHECK)

    def named(self, notes: list[tuple[str, str]], outcomes: str) -> bool:
        """Whether a notification names the job (an outcome, or progress if asked)."""
        hit = False
        for channel, payload in notes:
            if self.job_id in parse_ids(payload):
                if channel == outcomes:
                    self.finished_seen = True
                    hit = True
                elif self.on_progress is not None:
                    hit = True
        return hit


class Results:
    """Lookups and waits over the sync and async Stores of one queue."""

    def __init__(self, store: Store, astore: AsyncStore, settings: Settings) -> None:
        self.store = store
        self.astore = astore
        self.poll_only = settings.pooled and settings.listen_dsn is None
        self.outcomes = outcome_channel(settings.schema)
        self.progress = progress_channel(settings.schema)

    # -- lookups ---------------------------------------------------------------------------

    def find(self, job_id: int, conn: Any = None) -> JobInfo | None:
        info: JobInfo | None = self.store.run(history.job_info(job_id), conn)
        return info

    async def find_async(self, job_id: int, conn: Any = None) -> JobInfo | None:
        info: JobInfo | None = await self.astore.run(history.job_info(job_id), conn)
        return info

    def job(self, job_id: int, conn: Any = None) -> JobInfo:
        info = self.find(job_id, conn)
        if info is None:
            raise JobNotFound(job_id)
        return info

    async def job_async(self, job_id: int, conn: Any = None) -> JobInfo:
        info = await self.find_async(job_id, conn)
        if info is None:
            raise JobNotFound(job_id)
        return info

    def running(self, limit: int = 20, conn: Any = None) -> list[RunningJob]:
        found: list[RunningJob] = self.store.run(history.running_jobs(limit), conn)
        return found

    def history(self, task: str | None = None, since: datetime | None = None,
                limit: int = 50, conn: Any = None) -> list[HistoryEntry]:
        found: list[HistoryEntry] = self.store.run(history.history_list(task, since, limit), conn)
        return found

    # -- waiting ---------------------------------------------------------------------------

    def _channels(self, on_progress: ProgressCallback | None) -> list[str]:
        return [self.outcomes] + ([self.progress] if on_progress is not None else [])

    def wait(self, job_id: int, timeout: float | None = None,
             on_progress: ProgressCallback | None = None) -> Any:
        w = _Waiting(job_id, timeout, on_progress)
        if self.poll_only:
            while True:
                done, value = w.look(self.find(job_id))
                if done:
                    return value
                time.sleep(min(POLL, w.remaining()))
        with self.store.listening(self._channels(on_progress)) as receive:
            self.store.run(history.mark_awaited(job_id))
            while True:
                done, value = w.look(self.find(job_id))
                if done:
                    return value
                # Read again when a notification names the job, or at the recheck.
                until = time.monotonic() + w.remaining()
                while (left := until - time.monotonic()) > 0:
                    if w.named(receive(left), self.outcomes):
                        break

    async def wait_async(self, job_id: int, timeout: float | None = None,
                         on_progress: ProgressCallback | None = None) -> Any:
        w = _Waiting(job_id, timeout, on_progress)
        if self.poll_only:
            while True:
                done, value = w.look(await self.find_async(job_id))
                if done:
                    return value
                await asyncio.sleep(min(POLL, w.remaining()))
        async with self.astore.listening(self._channels(on_progress)) as receive:
            await self.astore.run(history.mark_awaited(job_id))
            while True:
                done, value = w.look(await self.find_async(job_id))
                if done:
                    return value
                until = time.monotonic() + w.remaining()
                while (left := until - time.monotonic()) > 0:
                    if w.named(await receive(left), self.outcomes):
                        break
