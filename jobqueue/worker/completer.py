"""The completer: writes job outcomes in batches, then tells the observers.

Outcomes are buffered and flushed every few milliseconds or when the buffer is
full, in one pipeline (see :func:`jobqueue.db.jobs.record`): batching acks is
the largest single throughput lever a Postgres queue has, since per-job round
trips and commits would cap the worker long before the CPU does. Only once a
flush has landed are its outcomes reported (logs, metrics), so every outcome
is reported once, and only what the database holds.

A flush that fails keeps its outcomes for the next try: re-running a statement
that did land is harmless, since the ``locked_by`` guard makes it change nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

from jobqueue.db import jobs
from jobqueue.db.store import AsyncStore
from jobqueue.errors import DatabaseError
from jobqueue.outcome import Outcome
from jobqueue.worker.service import Backoff, Service
from jobqueue.worker.state import WorkerState

Observer = Callable[[Outcome], None]


class Completer(Service):
    name = "completer"

    def __init__(self, store: AsyncStore, state: WorkerState, log: Any, *,
                 observers: Sequence[Observer] = (), flush_interval: float = 0.005,
                 flush_size: int = 500) -> None:
        super().__init__()
        self.store = store
        self.state = state
        self.log = log
        self.observers = tuple(observers)
        self.flush_interval = flush_interval
        self.flush_size = flush_size
        # Jobs with a lock_key whose outcome is buffered or written: their key is
        # freed in the next flush, after the ack.
        self._unlock: list[int] = []
        # The last flush's written outcomes per queue, counted in the next one.
        self._counts: jobs.Tally = {}
        self._full = asyncio.Event()

    # -- called by the executor ------------------------------------------------------------

    def record(self, outcome: Outcome) -> None:
        self.state.unacked.append(outcome)
        self._check_full()

    def unlock(self, job_id: int) -> None:
        """Free the job's lock_key with its outcome (call after the outcome)."""
        self._unlock.append(job_id)
        self._check_full()

    @property
    def pending(self) -> int:
        # Unlocks count: one can arrive just after its job's outcome was
        # flushed, and must not wait for some other job's outcome to be written.
        return len(self.state.unacked) + len(self._unlock)

    def _check_full(self) -> None:
        if self.pending >= self.flush_size:
            self._full.set()

    def wake(self) -> None:
        self._full.set()

    # -- the loop --------------------------------------------------------------------------

    async def run(self) -> None:
        backoff = Backoff()
        while True:
            if not self.pending:
                if self.stopping and not self._counts:
                    return
                if not self.stopping:
                    await self.sleep(self.flush_interval, self._full)
            self._full.clear()
            # Counts alone do not make a flush come sooner: they ride with the
            # next outcomes, or go on their own after a flush interval.
            if not self.pending and not self._counts:
                continue
            try:
                await self.flush()
                backoff.reset()
            except DatabaseError as exc:  # connection lost, server restarting, ...
                delay = backoff.next()
                self.log.warning("completer.flush_failed", error=str(exc),
                                 pending=self.pending, retry_in=delay)
                await asyncio.sleep(delay)

    async def flush(self) -> None:
        """Write every buffered outcome, then report them; on failure they stay buffered.

        An outcome whose write changed nothing is reported as lease lost: the job
        was rescued and handed to another worker while this one was frozen or
        cut off, so what it did is not what the database holds.
        """
        state = self.state
        async with state.rows_lock:  # never at once with a heartbeat (see WorkerState)
            # Taken, not removed: until the write lands they are still unacked
            # (their jobs still held, a burst worker still waiting for them).
            outcomes, unlock, counts = list(state.unacked), list(self._unlock), self._counts
            recorded = await self.store.run(jobs.record(outcomes, unlock, counts,
                                                        state.worker_id, self.store.schema))
        # A fetcher held back by unwritten outcomes (see WorkerState.unacked_limit)
        # may claim again.
        held_back = len(state.unacked) > state.unacked_limit // 2
        del state.unacked[:len(outcomes)]
        del self._unlock[:len(unlock)]
        if held_back:
            state.wake_fetcher()
        if recorded.lost:
            outcomes = [o.lost(recorded.lost[o.job.id]) if o.job.id in recorded.lost else o
                        for o in outcomes]
        self._counts = jobs.tally(outcomes)  # the counts just sent are written
        self.report(outcomes)

    def report(self, outcomes: list[Outcome]) -> None:
        """Count outcomes and tell the observers: after a flush, or directly for jobs
        found lost without a write (buffered jobs whose lease went)."""
        self.state.counts.update(o.kind.value for o in outcomes)
        for observe in self.observers:
            for outcome in outcomes:
                observe(outcome)
