"""The fetcher: claims ready jobs in batches sized to the free slots.

It claims again at once while claims come back full, sleeps when the queue is
empty, and wakes on the state's doorbell (a NOTIFY through the listener, a
freed slot, a rescue) or on the poll timer, which is what keeps a worker
working when LISTEN is broken.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timezone
from typing import Any

from jobqueue.db import jobs
from jobqueue.db.store import AsyncStore
from jobqueue.errors import DatabaseError
from jobqueue.worker.claimer import Claimer
from jobqueue.worker.executor import Executor
from jobqueue.worker.service import Backoff, Service
from jobqueue.worker.state import WorkerState


class Fetcher(Service):
    name = "fetcher"
    intake = True

    def __init__(self, store: AsyncStore, state: WorkerState, claimer: Claimer,
                 executor: Executor, log: Any, *, batch_size: int, poll_interval: float,
                 burst: bool = False) -> None:
        # Claim ahead in batches, not a job per freed slot: while jobs are
        # buffered, wait until at least half a batch fits.
        super().__init__()
        self.store = store
        self.state = state
        self.claimer = claimer
        self.executor = executor
        self.log = log
        self.batch_size = batch_size
        self.poll_interval = poll_interval
        self.burst = burst
        self.drained = asyncio.Event()
        self._claim_started = datetime.now(timezone.utc)
        self._last_claimed = 0

    @property
    def refill(self) -> int:
        """With jobs buffered, claim again only once this much room opened up."""
        return max(1, min(self.batch_size, self.state.prefetch) // 2)

    @property
    def claimed(self) -> int:
        return self.state.claimed

    @property
    def fast_poll(self) -> bool:
        """True while LISTEN is known to be down: the poll timer runs four times faster."""
        return not self.state.listening

    def wake(self) -> None:
        self.state.wake_fetcher()

    async def run(self) -> None:
        backoff, state = Backoff(), self.state
        while not self.stopping:
            state.wake.clear()
            state.adapt_prefetch(time.monotonic())
            room = state.room
            # In doubt about its leases (frozen, cut off), a worker claims
            # nothing more until a heartbeat has re-registered and checked them.
            if room <= 0 or (state.buffer and room < self.refill) or state.lease_in_doubt():
                await self.sleep(self.poll_interval, state.wake)
                continue
            limit = min(self.batch_size, room)
            # Outcomes not yet written when the claim began may include a retry
            # due now that the claim's snapshot could not see.
            unwritten = bool(state.unacked)
            try:
                claimed = await self.claim(limit)
                backoff.reset()
            except DatabaseError as exc:
                delay = backoff.next()
                self.log.warning("fetcher.claim_failed", error=str(exc), retry_in=delay)
                await self.sleep(delay)
                continue
            self.executor.accept(claimed)
            if len(claimed) == limit:
                continue  # a full batch: more are probably ready
            if self.burst and not claimed and not state.inflight and not state.buffer:
                if unwritten or state.unacked:
                    # Outcomes not yet written may include a retry that is due
                    # now: let them land, then look once more before leaving.
                    await self.sleep(0.01)
                    continue
                self.drained.set()
                return
            await self.sleep(await self._idle_wait(), state.wake)

    async def claim(self, limit: int) -> list[Any]:
        self._claim_started = datetime.now(timezone.utc)
        claimed = await self.claimer.claim(self.store, limit)
        self._last_claimed = len(claimed)
        self.state.claimed += len(claimed)
        return claimed

    async def _idle_wait(self) -> float:
        """Sleep until the poll timer, or sooner if a scheduled job comes due first."""
        interval = self.poll_interval / 4 if self.fast_poll else self.poll_interval
        if self.burst:
            return interval
        try:
            due: datetime | None = await self.store.run(jobs.next_run_at(self.claimer.queues))
        except DatabaseError:
            return interval
        if due is None:
            return interval
        if due <= self._claim_started and not self._last_claimed:
            # Ready before the last claim looked, yet it got nothing: held back
            # by a pause, a fleet-wide limit or a lock key. Claiming again at
            # once would spin on the database; a NOTIFY, a freed slot or a
            # settings change wakes the fetcher sooner than the poll.
            return interval
        until = (due - datetime.now(timezone.utc)).total_seconds()
        return max(0.0, min(interval, until + 0.001))
