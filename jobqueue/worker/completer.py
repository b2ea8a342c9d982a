"""The completer: records job outcomes in batches.

Finished jobs are buffered and flushed every few milliseconds or when the
buffer is full: one DELETE for all successes, one UPDATE for all retries and
one DELETE-INSERT for all dead jobs, sent together in a pipeline. Batching acks
is the largest single throughput lever a Postgres queue has: per-job
round trips and commits would otherwise cap the worker long before the CPU does.

The same pipeline adds the flush's outcomes per queue to ``job_counts`` (the
10-second buckets behind "jobs/s over the last minute"): one more statement per
flush rather than a row per job.
"""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from jobqueue import sql
from jobqueue.worker.service import Backoff, Service


class Completer(Service):
    name = "completer"

    def __init__(
        self,
        pool: AsyncConnectionPool[Any],
        schema: str,
        worker_id: str,
        log: Any,
        flush_interval: float = 0.005,
        flush_size: int = 500,
    ) -> None:
        super().__init__()
        self.pool = pool
        self.schema = schema
        self.worker_id = worker_id
        self.log = log
        self.flush_interval = flush_interval
        self.flush_size = flush_size
        self._succeeded: list[int] = []
        self._retries: list[tuple[int, int, float, str]] = []
        self._dead: list[tuple[int, str, str | None]] = []
        # Jobs with a lock_key whose outcome is buffered: their key is freed in
        # the same flush, after the ack.
        self._unlock: list[int] = []
        # Per queue: [succeeded, retried, dead] not yet written to job_counts.
        self._tally: dict[str, list[int]] = {}
        self._full = asyncio.Event()
        self.counts = {"succeeded": 0, "retried": 0, "dead": 0}

    # -- called by the executor ------------------------------------------------------------

    def succeeded(self, job_id: int, queue: str | None = None) -> None:
        self._succeeded.append(job_id)
        if queue is not None:
            self._count(queue, 0)
        self._check_full()

    def retry(self, job_id: int, attempt: int, delay: float, error: str,
              queue: str | None = None) -> None:
        self._retries.append((job_id, attempt, delay, error))
        if queue is not None:
            self._count(queue, 1)
        self._check_full()

    def dead(self, job_id: int, reason: str, error: str | None,
             queue: str | None = None) -> None:
        self._dead.append((job_id, reason, error))
        if queue is not None:
            self._count(queue, 2)
        self._check_full()

    def unlock(self, job_id: int) -> None:
        """Free the job's lock_key with its outcome (call after the outcome)."""
        self._unlock.append(job_id)

    def _count(self, queue: str, outcome: int) -> None:
        tally = self._tally.get(queue)
        if tally is None:
            tally = self._tally[queue] = [0, 0, 0]
        tally[outcome] += 1

    def pending_ids(self) -> list[int]:
        """Jobs whose outcome is buffered: still leased until the flush lands."""
        return [*self._succeeded, *(r[0] for r in self._retries), *(d[0] for d in self._dead)]

    @property
    def pending(self) -> int:
        # Unlocks count: one can arrive just after its job's outcome was
        # flushed, and must not wait for some other job's outcome to be written.
        return len(self._succeeded) + len(self._retries) + len(self._dead) + len(self._unlock)

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
                if self.stopping:
                    return
                await self.sleep(self.flush_interval, self._full)
            self._full.clear()
            if not self.pending:
                continue
            try:
                await self.flush()
                backoff.reset()
            except psycopg.Error as exc:  # connection lost, server restarting, ...
                delay = backoff.next()
                self.log.warning("completer.flush_failed", error=str(exc).strip(),
                                 pending=self.pending, retry_in=delay)
                await asyncio.sleep(delay)

    async def flush(self) -> None:
        """Write every buffered outcome; on failure they stay buffered for the next try."""
        ok, retries, dead = self._succeeded, self._retries, self._dead
        self._succeeded, self._retries, self._dead = [], [], []
        unlock, self._unlock = self._unlock, []
        tally, self._tally = self._tally, {}
        try:
            async with self.pool.connection() as conn, conn.pipeline():
                # Each statement is correct on its own (the locked_by guard), so
                # they need no shared transaction: in autocommit each commits alone
                # and the pipeline sends all three in one round trip.
                if ok:
                    await conn.execute(sql.query("ack_succeeded", self.schema),
                                       {"ids": ok, "worker_id": self.worker_id})
                if retries:
                    ids, attempts, delays, errors = zip(*retries, strict=True)
                    await conn.execute(sql.query("ack_retry", self.schema), {
                        "ids": list(ids), "attempts": list(attempts), "delays": list(delays),
                        "errors": list(errors), "worker_id": self.worker_id})
                if dead:
                    ids, reasons, derrors = zip(*dead, strict=True)
                    await conn.execute(sql.query("ack_dead", self.schema), {
                        "ids": list(ids), "reasons": list(reasons), "errors": list(derrors),
                        "worker_id": self.worker_id})
                if unlock:
                    await conn.execute(sql.query("release_locks", self.schema),
                                       {"ids": unlock, "worker_id": self.worker_id})
                if tally:
                    # Between two syncs a pipeline is one implicit transaction:
                    # the counts commit together with the acks or not at all.
                    queues = sorted(tally)
                    await conn.execute(sql.query("count_outcomes", self.schema), {
                        "queues": queues,
                        "succeeded": [tally[q][0] for q in queues],
                        "retried": [tally[q][1] for q in queues],
                        "dead": [tally[q][2] for q in queues]})
        except BaseException:
            # Keep them for the next flush. Re-running an already applied
            # statement is harmless: the rows it touched are gone or re-queued,
            # and the locked_by guard makes it change nothing.
            self._succeeded = ok + self._succeeded
            self._retries = retries + self._retries
            self._dead = dead + self._dead
            self._unlock = unlock + self._unlock
            for queue, counts in tally.items():
                kept = self._tally.setdefault(queue, [0, 0, 0])
                for outcome, n in enumerate(counts):
                    kept[outcome] += n
            raise
        self.counts["succeeded"] += len(ok)
        self.counts["retried"] += len(retries)
        self.counts["dead"] += len(dead)
