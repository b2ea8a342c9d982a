"""What a worker's services share: jobs in flight, outcomes not yet written, wake-ups.

One object, passed to every service that needs it, instead of services reaching
into each other: the fetcher reads the free slots, the heartbeat the held jobs,
the executor adds and removes running jobs, the completer buffers outcomes,
and anyone may wake the fetcher (a freed slot, a NOTIFY, a rescue, a settings
change).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import NamedTuple

from jobqueue.outcome import Outcome
from jobqueue.tasks import JobContext


class Running(NamedTuple):
    """A job whose handler runs now."""

    task: asyncio.Task[Outcome]
    ctx: JobContext
    is_async: bool
    forked: bool


class WorkerState:
    def __init__(self, worker_id: str, concurrency: int) -> None:
        self.worker_id = worker_id
        self.concurrency = concurrency
        self.inflight: dict[int, Running] = {}
        # Outcomes recorded but not yet written: their jobs are still leased.
        self.unacked: list[Outcome] = []
        self.wake = asyncio.Event()  # the fetcher's doorbell
        self.idle = asyncio.Event()
        self.idle.set()
        self.listening = False  # False: LISTEN is down, the fetcher polls faster
        self.started = 0
        self.claimed = 0
        self.counts: Counter[str] = Counter()  # outcomes written, by kind

    @property
    def free(self) -> int:
        return self.concurrency - len(self.inflight)

    def held_ids(self) -> list[int]:
        """Jobs this worker holds: running, or finished with the outcome not yet written."""
        return [*self.inflight, *(o.job.id for o in self.unacked)]

    def wake_fetcher(self) -> None:
        self.wake.set()
