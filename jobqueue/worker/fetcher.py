"""The fetcher: claims ready jobs in batches sized to the free slots.

It claims again at once while claims come back full, sleeps when the queue is
empty, and wakes on a NOTIFY (through the listener), on a freed slot, or on the
poll timer, which is what keeps a worker working when LISTEN is broken.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from jobqueue import sql
from jobqueue.worker.claimer import Claimer
from jobqueue.worker.executor import Executor
from jobqueue.worker.jobs import ClaimedJob
from jobqueue.worker.service import Backoff, Service


class Fetcher(Service):
    name = "fetcher"

    def __init__(
        self,
        pool: AsyncConnectionPool[Any],
        schema: str,
        worker_id: str,
        queues: tuple[str, ...],
        executor: Executor,
        log: Any,
        *,
        batch_size: int = 100,
        poll_interval: float = 1.0,
        lease: float = 30.0,
        burst: bool = False,
        weights: dict[str, float] | None = None,
        fair_every: int = 10,
    ) -> None:
        super().__init__()
        self.pool = pool
        self.schema = schema
        self.worker_id = worker_id
        self.queues = list(queues)
        self.executor = executor
        self.log = log
        self.batch_size = batch_size
        self.poll_interval = poll_interval
        self.lease = lease
        self.burst = burst
        self.poke = asyncio.Event()
        self.drained = asyncio.Event()
        self.claimed = 0
        self.fast_poll = False  # set while LISTEN is known to be down
        self.pending_outcomes: Callable[[], int] = lambda: 0
        self._claim_started = datetime.now(timezone.utc)
        self._last_claimed = 0
        self.claimer = Claimer(schema, worker_id, queues, lease, weights=weights,
                               fair_every=fair_every)

    def wake(self) -> None:
        self.poke.set()

    async def run(self) -> None:
        backoff = Backoff()
        while not self.stopping:
            self.poke.clear()
            free = self.executor.free
            if free <= 0:
                await self.sleep(self.poll_interval, self.poke)
                continue
            limit = min(self.batch_size, free)
            try:
                jobs = await self.claim(limit)
                backoff.reset()
            except psycopg.Error as exc:
                delay = backoff.next()
                self.log.warning("fetcher.claim_failed", error=str(exc).strip(), retry_in=delay)
                await self.sleep(delay)
                continue
            for job in jobs:
                self.executor.submit(job)
            if len(jobs) == limit:
                continue  # a full batch: more are probably ready
            if self.burst and not jobs and not self.executor.inflight:
                if self.pending_outcomes():
                    # Outcomes not yet written may include a retry that is due
                    # now: let them land, then look once more before leaving.
                    await self.sleep(0.01)
                    continue
                self.drained.set()
                return
            await self.sleep(await self._idle_wait(), self.poke)

    async def claim(self, limit: int) -> list[ClaimedJob]:
        self._claim_started = datetime.now(timezone.utc)
        async with self.pool.connection() as conn:
            jobs = await self.claimer.claim(conn, limit)
        self._last_claimed = len(jobs)
        self.claimed += len(jobs)
        return jobs

    async def _idle_wait(self) -> float:
        """Sleep until the poll timer, or sooner if a scheduled job comes due first."""
        interval = self.poll_interval / 4 if self.fast_poll else self.poll_interval
        if self.burst:
            return interval
        try:
            async with self.pool.connection() as conn:
                cur = await conn.execute(sql.query("next_run_at", self.schema),
                                         {"queues": self.queues})
                row = await cur.fetchone()
        except psycopg.Error:
            return interval
        if row is None or row[0] is None:
            return interval
        due: datetime = row[0]
        if due <= self._claim_started and not self._last_claimed:
            # Ready before the last claim looked, yet it got nothing: held back
            # by a pause, a fleet-wide limit or a lock key. Claiming again at
            # once would spin on the database; a NOTIFY, a freed slot or a
            # settings change wakes the fetcher sooner than the poll.
            return interval
        until = (due - datetime.now(timezone.utc)).total_seconds()
        return max(0.0, min(interval, until + 0.001))
