"""The recycler: a supervised worker that crossed its limits makes way for a fresh one.

Under ``jobqueue worker --supervise`` (see :mod:`jobqueue.cli.supervise`) a
worker with ``--max-jobs-per-child`` or ``--max-memory`` watches itself: once
it has started that many jobs, or its resident memory passed the limit, it
stops the way it stops on SIGTERM (no more claims, its jobs finish within the
grace period, what it holds unstarted goes back to the queue uncounted) and
exits with :data:`jobqueue.protocol.RECYCLE_EXIT_CODE`, for the supervisor to
start the next one. Nothing is lost and nothing runs twice: it is an ordinary
graceful shutdown, only asked for by the worker itself.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from jobqueue.config import MEMORY_CHECK_INTERVAL
from jobqueue.worker.processes import resident_bytes
from jobqueue.worker.service import Service
from jobqueue.worker.state import WorkerState


class Recycler(Service):
    name = "recycler"

    def __init__(self, state: WorkerState, log: Any, stop: Callable[[str], None], *,
                 max_jobs: int | None = None, max_memory: int | None = None,
                 interval: float = MEMORY_CHECK_INTERVAL) -> None:
        super().__init__()
        self.state = state
        self.log = log
        self.stop_worker = stop
        self.max_jobs = max_jobs
        self.max_memory = max_memory
        self.interval = interval

    def over(self) -> str | None:
        """Which limit this worker crossed, if any."""
        if self.max_jobs is not None and self.state.started >= self.max_jobs:
            return f"started {self.state.started} jobs (--max-jobs-per-child {self.max_jobs})"
        if self.max_memory is not None:
            rss = resident_bytes()
            if rss > self.max_memory:
                return (f"resident memory {rss / 2**20:.0f} MB over --max-memory "
                        f"{self.max_memory / 2**20:.0f} MB")
        return None

    async def run(self) -> None:
        while not self.stopping:
            await self.sleep(self.interval)
            reason = None if self.stopping else self.over()
            if reason is not None:
                self.log.info("worker.recycle", reason=reason, started=self.state.started)
                self.stop_worker(reason)
                return
