"""How the fetcher claims: which queues, in what order, how many from each.

Three things shape a claim, all shared by the whole fleet through Postgres:

- **pause**: paused queues (the ``queues`` table) are left out;
- **limits**: a queue with ``max_running`` or a rate limit is claimed inside a
  transaction that first takes that queue's advisory lock, then counts what
  runs (or what started in the current window) and claims only the rest. The
  lock makes the count and the claim one step for the fleet: two workers can
  never both see "one slot free" and both take it (:func:`jobqueue.db.jobs.claim`);
- **order**: with queue weights the queues are ranked by a weighted draw for
  each claim (a queue of weight 3 comes first three times as often as one of
  weight 1); without weights ready jobs of all queues are merged by priority.
  Every ``fair_every``-th claim takes the *oldest* ready jobs whatever their
  priority, so low-priority work keeps moving under a flood of urgent jobs.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field

from jobqueue.db import jobs
from jobqueue.db.store import AsyncStore
from jobqueue.protocol import advisory_key
from jobqueue.registry import Attempts
from jobqueue.rows import OPEN_QUEUE, ClaimedJob, QueueSettings

SETTINGS_TTL = 1.0  # seconds: how stale a pause or a limit may be without a NOTIFY
# Every this many claims, every queue's scan starts at the head of the index,
# which finds the jobs that landed behind where the scans had got to; and after
# a claim that came back short, the next one does, at most this often (seconds).
HEAD_EVERY = 8
HEAD_INTERVAL = 0.5
# A scan from the head is cheap (about a millisecond) until a held xmin horizon
# keeps the index entries of every job finished since: then it walks all of
# them (measured at 200k jobs done under a held snapshot: 21.6 ms from the head,
# 0.9 ms from the remembered start), and one claim in eight from the head was
# most of the worker's time. Past HEAD_COSTLY seconds per head scan, the next
# waits until HEAD_SHARE of the time since would have been spent on them. The
# fairness claim (oldest first, from the head of jobs_oldest_idx) is spaced the
# same way.
HEAD_COSTLY = 0.005
HEAD_SHARE = 0.1


def queue_lock_key(schema: str, queue: str) -> int:
    return advisory_key(schema, "queue", queue)


@dataclass
class Claimer:
    schema: str
    worker_id: str
    queues: tuple[str, ...]
    lease: float
    weights: dict[str, float] | None = None
    fair_every: int = 10
    #: What a job enqueued without max_attempts gets (this worker's declarations).
    attempts: Attempts = field(default_factory=Attempts)
    #: Behind a transaction pooler: each claim sets the worker settings for itself.
    local_settings: bool = False
    rng: random.Random = field(default_factory=random.Random)
    settings: dict[str, QueueSettings] = field(default_factory=dict)
    # Per queue, the index position past the last job claimed from it by
    # priority (see the claim statement for why scans start there).
    positions: dict[str, jobs.Position] = field(default_factory=dict)
    _loaded_at: float = -1e9
    _claims: int = 0
    _short = False
    _head_at: float = -1e9
    _head_allowed: float = -1e9  # no scan from the head before this (see HEAD_COSTLY)
    _oldest_allowed: float = -1e9  # ... nor a fairness claim

    def invalidate(self) -> None:
        """A control message said the settings changed: re-read before the next claim."""
        self._loaded_at = -1e9

    @property
    def active(self) -> list[str]:
        """The worker's queues that are not paused, each once, in configured order."""
        return [q for q in dict.fromkeys(self.queues)
                if not self.settings.get(q, OPEN_QUEUE).paused]

    async def refresh(self, store: AsyncStore) -> None:
        if time.monotonic() - self._loaded_at < SETTINGS_TTL:
            return
        found: list[QueueSettings] = await store.run(jobs.queue_settings(self.queues))
        self.settings = {s.name: s for s in found}
        self._loaded_at = time.monotonic()

    def order(self, queues: list[str]) -> list[str]:
        """The queues in this claim's order: a weighted draw without replacement."""
        if not self.weights or len(queues) < 2:
            return queues
        # Efraimidis-Spirakis: sort by u ** (1 / weight), u uniform in (0, 1].
        keyed = [(1.0 - self.rng.random()) ** (1.0 / max(self.weights.get(q, 1.0), 1e-9))
                 for q in queues]
        return [q for _, q in sorted(zip(keyed, queues, strict=True), reverse=True)]

    def request(self, limit: int) -> jobs.ClaimRequest | None:
        """The next claim of at most ``limit`` jobs; None while every queue is paused."""
        queues = self.order(self.active)
        if not queues:
            return None
        self._claims += 1
        limited = [q for q in queues if self.settings.get(q, OPEN_QUEUE).limited]
        now = time.monotonic()
        from_head = now >= self._head_allowed and (self._claims % HEAD_EVERY == 0 or (
            self._short and now - self._head_at >= HEAD_INTERVAL))
        if from_head:
            self._head_at = now
        return jobs.ClaimRequest(
            worker_id=self.worker_id, lease=self.lease, limit=limit, queues=queues,
            ranked=bool(self.weights),
            oldest=(self.fair_every > 0 and self._claims % self.fair_every == 0
                    and now >= self._oldest_allowed),
            limited=limited,
            lock_keys=sorted(queue_lock_key(self.schema, q) for q in limited),
            rated=[q for q in limited if self.settings[q].rate_limit is not None],
            after=[jobs.HEAD if from_head else self.positions.get(q, jobs.HEAD)
                   for q in queues],
            attempts=self.attempts, local_settings=self.local_settings)

    def advance(self, request: jobs.ClaimRequest, claimed: list[ClaimedJob]) -> None:
        """Move each queue's start past what this claim took. A short claim may have
        left jobs behind the starts: the next claim starts at the head (at most
        every HEAD_INTERVAL seconds, so a steady trickle keeps its fast scans)."""
        self._short = len(claimed) < request.limit
        if request.oldest:
            return  # another index, another order: positions unchanged
        for job in claimed:
            here = (job.priority, job.run_at, job.id)
            if here > self.positions.get(job.queue, jobs.HEAD):
                self.positions[job.queue] = here

    async def claim(self, store: AsyncStore, limit: int) -> list[ClaimedJob]:
        await self.refresh(store)
        request = self.request(limit)
        if request is None:
            return []
        started = time.monotonic()
        claimed = claim_order(request, await store.run(jobs.claim(request)))
        elapsed = time.monotonic() - started
        if request.oldest:
            self._oldest_allowed = spaced(elapsed)
        elif all(a == jobs.HEAD for a in request.after):
            self._head_allowed = spaced(elapsed)
        self.advance(request, claimed)
        return claimed


def spaced(seconds: float) -> float:
    """When the next scan from an index's head may run, after one that took ``seconds``."""
    if seconds <= HEAD_COSTLY:
        return -1e9  # cheap: as often as the claims ask
    return time.monotonic() + seconds * (1 - HEAD_SHARE) / HEAD_SHARE


def claim_order(request: jobs.ClaimRequest, claimed: list[ClaimedJob]) -> list[ClaimedJob]:
    """The claimed jobs in the order the claim chose them, to start them in.

    UPDATE ... RETURNING gives rows in the order it updated them (by id, through
    the primary key), not the order the claim picked them in; with a buffer the
    order matters: the jobs start one by one as slots free.
    """
    rank = {queue: i for i, queue in enumerate(request.queues)} if request.ranked else {}
    if request.oldest:
        return sorted(claimed, key=lambda j: (rank.get(j.queue, 0), j.run_at, j.id))
    return sorted(claimed, key=lambda j: (rank.get(j.queue, 0), j.priority, j.run_at, j.id))
