"""How the fetcher claims: which queues, in what order, how many from each.

Three things shape a claim, all shared by the whole fleet through Postgres:

- **pause**: paused queues (the ``queues`` table) are left out;
- **limits**: a queue with ``max_running`` or a rate limit is claimed inside a
  transaction that first takes that queue's advisory lock, then counts what
  runs (or what started in the current window) and claims only the rest. The
  lock makes the count and the claim one step for the fleet: two workers can
  never both see "one slot free" and both take it. The count runs in a
  statement *after* the lock is granted, so its snapshot includes every claim
  committed by the previous holder;
- **order**: with queue weights the queues are ranked by a weighted draw for
  each claim (a queue of weight 3 comes first three times as often as one of
  weight 1); without weights ready jobs of all queues are merged by priority.
  Every ``fair_every``-th claim takes the *oldest* ready jobs whatever their
  priority, so low-priority work keeps moving under a flood of urgent jobs.
"""

from __future__ import annotations

import hashlib
import random
import time
from dataclasses import dataclass, field
from typing import Any

import psycopg

from jobqueue import sql
from jobqueue.queues import QueueSettings
from jobqueue.worker.jobs import ClaimedJob

SETTINGS_TTL = 1.0  # seconds: how stale a pause or a limit may be without a NOTIFY


def queue_lock_key(schema: str, queue: str) -> int:
    digest = hashlib.blake2b(f"jobqueue:{schema}:queue:{queue}".encode(),
                             digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


@dataclass
class Claimer:
    schema: str
    worker_id: str
    queues: tuple[str, ...]
    lease: float
    weights: dict[str, float] | None = None
    fair_every: int = 10
    rng: random.Random = field(default_factory=random.Random)
    settings: dict[str, QueueSettings] = field(default_factory=dict)
    _loaded_at: float = -1e9
    _claims: int = 0

    def invalidate(self) -> None:
        """A control message said the settings changed: re-read before the next claim."""
        self._loaded_at = -1e9

    @property
    def active(self) -> list[str]:
        """The worker's queues that are not paused, each once, in configured order."""
        return [q for q in dict.fromkeys(self.queues) if not self.settings.get(q, _OPEN).paused]

    async def refresh(self, conn: psycopg.AsyncConnection[Any]) -> None:
        if time.monotonic() - self._loaded_at < SETTINGS_TTL:
            return
        cur = await conn.execute(sql.query("queue_settings", self.schema),
                                 {"queues": list(self.queues)})
        self.settings = {row[0]: QueueSettings(*row) for row in await cur.fetchall()}
        self._loaded_at = time.monotonic()

    def order(self, queues: list[str]) -> list[str]:
        """The queues in this claim's order: a weighted draw without replacement."""
        if not self.weights or len(queues) < 2:
            return queues
        # Efraimidis-Spirakis: sort by u ** (1 / weight), u uniform in (0, 1].
        keyed = [(1.0 - self.rng.random()) ** (1.0 / max(self.weights.get(q, 1.0), 1e-9))
                 for q in queues]
        return [q for _, q in sorted(zip(keyed, queues, strict=True), reverse=True)]

    async def claim(self, conn: psycopg.AsyncConnection[Any], limit: int) -> list[ClaimedJob]:
        await self.refresh(conn)
        queues = self.order(self.active)
        if not queues:
            return []
        self._claims += 1
        oldest = self.fair_every > 0 and self._claims % self.fair_every == 0
        statement = sql.query("claim_oldest" if oldest else "claim", self.schema)
        params: dict[str, Any] = {
            "worker_id": self.worker_id, "lease": self.lease, "limit": limit,
            "ranked": bool(self.weights)}
        limited = [q for q in queues if self.settings.get(q, _OPEN).limited]
        if not limited:
            params |= {"queues": queues, "limits": [limit] * len(queues)}
            cur = await conn.execute(statement, params)
            return [ClaimedJob(*row) for row in await cur.fetchall()]
        async with conn.transaction():
            # Sorted, so two workers serving overlapping queues lock in the same
            # order and cannot deadlock.
            for key in sorted(queue_lock_key(self.schema, q) for q in limited):
                await conn.execute(sql.query("advisory_xact_lock", self.schema), {"key": key})
            cur = await conn.execute(sql.query("queue_capacity", self.schema),
                                     {"queues": limited})
            capacity = {row[0]: int(row[1]) for row in await cur.fetchall()}
            limits = [min(limit, capacity.get(q, limit)) for q in queues]
            params |= {"queues": queues, "limits": limits}
            cur = await conn.execute(statement, params)
            jobs = [ClaimedJob(*row) for row in await cur.fetchall()]
            rated = [q for q in limited if self.settings[q].rate_limit is not None]
            if rated and jobs:
                counts = {q: sum(1 for j in jobs if j.queue == q) for q in rated}
                await conn.execute(sql.query("queue_window_add", self.schema), {
                    "queues": list(counts), "counts": list(counts.values())})
        return jobs


_OPEN = QueueSettings(name="")
