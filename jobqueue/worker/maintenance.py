"""Maintenance: the fleet's housekeeping, done by one leader at a time.

Every worker runs this loop, and each round first tries a transaction-scoped
advisory lock; the one that gets it is the leader for that round. A
transaction-scoped lock (rather than a session lock held for life) releases
itself at COMMIT, so leadership survives connection loss without a stale
holder and works through PgBouncer's transaction mode.

The leader reaps workers that stopped heartbeating (or whose session Postgres
shows as gone) and rescues their jobs: each rescued job counts a crashed
attempt, and a job out of attempts goes to dead_jobs with reason 'crashed'.
"""

from __future__ import annotations

import hashlib
import random
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from jobqueue import sql
from jobqueue.worker.service import Service


def leader_key(schema: str) -> int:
    digest = hashlib.blake2b(f"jobqueue:{schema}:leader".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


class Maintenance(Service):
    name = "maintenance"

    def __init__(self, pool: AsyncConnectionPool[Any], schema: str, log: Any, *,
                 interval: float = 1.0, worker_timeout: float = 30.0,
                 session_grace: float = 5.0, channel: str = "") -> None:
        super().__init__()
        self.pool = pool
        self.schema = schema
        self.log = log
        self.interval = interval
        self.worker_timeout = worker_timeout
        self.session_grace = session_grace
        self.channel = channel
        self.key = leader_key(schema)
        self.rounds_led = 0

    async def run(self) -> None:
        while not self.stopping:
            # Jitter keeps a fleet started at once from contending on every round.
            await self.sleep(self.interval * random.uniform(0.8, 1.2))
            if self.stopping:
                return
            try:
                await self.round()
            except psycopg.Error as exc:
                self.log.warning("maintenance.failed", error=str(exc).strip())

    async def round(self) -> bool:
        """One maintenance round; True if this worker was the leader."""
        q = self.schema
        async with self.pool.connection() as conn, conn.transaction():
            cur = await conn.execute(sql.query("try_leadership", q), {"key": self.key})
            row = await cur.fetchone()
            if not row or not row[0]:
                return False
            self.rounds_led += 1
            cur = await conn.execute(sql.query("reap_workers", q), {
                "worker_timeout": self.worker_timeout, "session_grace": self.session_grace})
            reaped = [r[0] for r in await cur.fetchall()]
            cur = await conn.execute(sql.query("rescue_dead", q))
            dead = len(await cur.fetchall())
            cur = await conn.execute(sql.query("rescue_requeue", q))
            rescued = await cur.fetchall()
            requeued = len(rescued)
            for queue in sorted({row[1] for row in rescued} if self.channel else ()):
                # Wake idle workers now rather than at their next poll.
                await conn.execute(sql.query("notify", q),
                                   {"channel": self.channel, "message": queue})
            await conn.execute(sql.query("sweep_locks", q))
            if self.rounds_led % 60 == 1:
                # Outcome counters: only the last minute is read (stats, metrics).
                await conn.execute(sql.query("prune_job_counts", q), {"keep": 3600.0})
        if reaped or dead or requeued:
            self.log.warning("maintenance.rescued", workers=reaped, requeued=requeued, dead=dead)
        return True
