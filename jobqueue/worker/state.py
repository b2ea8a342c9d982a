"""What a worker's services share: jobs in flight, outcomes not yet written, wake-ups.

One object, passed to every service that needs it, instead of services reaching
into each other: the fetcher reads the free slots, the heartbeat the held jobs,
the executor adds and removes running jobs, the completer buffers outcomes,
and anyone may wake the fetcher (a freed slot, a NOTIFY, a rescue, a settings
change).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, deque
from typing import NamedTuple

from jobqueue.config import DEFAULT_LEASE, DEFAULT_PREFETCH_CAP, DEFAULT_PREFETCH_HORIZON
from jobqueue.outcome import Outcome
from jobqueue.rows import ClaimedJob
from jobqueue.tasks import JobContext


class Running(NamedTuple):
    """A job whose handler runs now."""

    task: asyncio.Task[Outcome] | None  # None: a sync handler in a pool thread
    ctx: JobContext
    is_async: bool
    forked: bool


class WorkerState:
    def __init__(self, worker_id: str, concurrency: int, prefetch: int = 0,
                 lease_timeout: float = DEFAULT_LEASE, unacked_limit: int | None = None,
                 adaptive: bool = False) -> None:
        self.worker_id = worker_id
        self.concurrency = concurrency
        # How many claimed jobs may wait for a slot. Fixed, or with ``adaptive``
        # at least ``prefetch`` and up to what the worker runs in the prefetch
        # horizon (see adapt_prefetch).
        self.prefetch = self.prefetch_floor = prefetch
        self.adaptive = adaptive
        self._rate = 0.0  # jobs started per second, smoothed
        self._rate_at = time.monotonic()
        self._rate_started = 0
        # Finished jobs whose outcome is not written yet, at most: past it the
        # worker claims nothing more until a flush lands. Without it, when the
        # writes fall behind (a held xmin horizon makes every DELETE slower), a
        # worker kept claiming while finished jobs piled up in its memory (23k
        # of them in the soak at a 1M backlog, RSS +26 %), each one's lease still
        # extended by every heartbeat. The backlog belongs in the database.
        self.unacked_limit = unacked_limit if unacked_limit is not None else 1 << 30
        # The last time a heartbeat extended this worker's leases. Past
        # lease_timeout without one (the process was frozen, the network cut),
        # its jobs may have been rescued and handed to another worker: until a
        # heartbeat has checked which are still ours, the lease is in doubt.
        self.lease_timeout = lease_timeout
        self.last_beat = time.monotonic()
        self.suspect = False
        self.inflight: dict[int, Running] = {}
        # Claimed ahead, waiting for a free slot: leased (and heartbeated) like
        # running jobs, released unstarted at shutdown without counting an attempt.
        self.buffer: deque[ClaimedJob] = deque()
        # Outcomes recorded but not yet written: their jobs are still leased.
        self.unacked: list[Outcome] = []
        # Held by the heartbeat's lease extension and by the completer's flush,
        # so that they never run at once: both lock rows of this worker's jobs
        # (an UPDATE and a DELETE of overlapping ids, each in its own plan's
        # order), and two of them at once can deadlock. Measured in the soak at a
        # 1M backlog: four "deadlock detected" flushes in ten minutes, each after
        # Postgres' deadlock_timeout (1 s) of both waiting.
        self.rows_lock = asyncio.Lock()
        self.wake = asyncio.Event()  # the fetcher's doorbell
        self.idle = asyncio.Event()
        self.idle.set()
        self.listening = False  # False: LISTEN is down, the fetcher polls faster
        self.started = 0
        self.claimed = 0
        self.counts: Counter[str] = Counter()  # outcomes written, by kind

    @property
    def free(self) -> int:
        """Slots where a handler could start now."""
        return self.concurrency - len(self.inflight)

    @property
    def room(self) -> int:
        """How many more jobs the worker may claim: never more than
        ``concurrency + prefetch`` held at once, running or buffered, nor while
        ``unacked_limit`` outcomes wait to be written."""
        held = self.concurrency + self.prefetch - len(self.inflight) - len(self.buffer)
        return min(held, self.unacked_limit - len(self.unacked))

    def adapt_prefetch(self, now: float) -> None:
        """Size the buffer to the worker's pace (the fetcher calls this before each claim).

        A claim costs about the same for 20 jobs as for 100: with a fixed
        buffer of 4 x concurrency, short jobs are claimed 20 at a time and the
        claims are most of the worker's work (measured at concurrency 10: 13k
        jobs/s with 40 buffered, 27k with 200). A buffer of what the worker runs
        in ``DEFAULT_PREFETCH_HORIZON`` keeps claims large for short jobs, while
        a job never waits in it for longer than that horizon; long jobs keep the
        floor, so they are not hoarded by one worker while others are idle.
        """
        if not self.adaptive:
            return
        elapsed = now - self._rate_at
        if elapsed < 0.1:
            return
        rate = (self.started - self._rate_started) / elapsed
        self._rate = rate if not self._rate else 0.5 * self._rate + 0.5 * rate
        self._rate_at, self._rate_started = now, self.started
        paced = min(DEFAULT_PREFETCH_CAP, int(self._rate * DEFAULT_PREFETCH_HORIZON))
        self.prefetch = max(self.prefetch_floor, paced)

    def lease_in_doubt(self) -> bool:
        """True from the moment the leases may have run out until a heartbeat checked them."""
        if not self.suspect and time.monotonic() - self.last_beat > self.lease_timeout:
            self.suspect = True
        return self.suspect

    def held_ids(self) -> list[int]:
        """Jobs this worker holds: buffered, running, or finished with the outcome
        not yet written."""
        # Read under ``rows_lock`` by the heartbeat, so no flush is writing any
        # of them meanwhile (the two take turns).
        return [*(j.id for j in self.buffer), *self.inflight,
                *(o.job.id for o in self.unacked)]

    def wake_fetcher(self) -> None:
        self.wake.set()
