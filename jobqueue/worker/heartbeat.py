"""The heartbeat: keeps this worker's leases and its ``workers`` row fresh.

One statement extends the lease of every job the worker holds, so a handler
that runs for an hour keeps its job while a worker that died loses its jobs
once the lease runs out.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from jobqueue import sql
from jobqueue.worker.service import Service


class Heartbeat(Service):
    name = "heartbeat"

    def __init__(self, pool: AsyncConnectionPool[Any], schema: str, worker_id: str,
                 register_params: dict[str, Any], log: Any, *, interval: float = 2.0,
                 lease: float = 30.0) -> None:
        super().__init__()
        self.pool = pool
        self.schema = schema
        self.worker_id = worker_id
        self.register_params = register_params
        self.log = log
        self.interval = interval
        self.lease = lease
        self.beats = 0
        # The ids of the jobs this worker holds (in flight or awaiting their ack).
        self.held_ids: Callable[[], list[int]] = list
        # Told about jobs of ours flagged cancel_requested (NOTIFY may be missed).
        self.on_cancel_requested: Callable[[int], object] = lambda job_id: None

    async def run(self) -> None:
        while not self.stopping:
            await self.sleep(self.interval)
            if self.stopping:
                return
            try:
                await self.beat()
            except psycopg.Error as exc:
                self.log.warning("heartbeat.failed", error=str(exc).strip())

    async def beat(self) -> None:
        params = {"worker_id": self.worker_id, "lease": self.lease, "ids": self.held_ids()}
        async with self.pool.connection() as conn, conn.transaction():
            cur = await conn.execute(sql.query("heartbeat_jobs", self.schema), params)
            flagged = [row[0] for row in await cur.fetchall() if row[1]]
            cur = await conn.execute(sql.query("heartbeat_worker", self.schema), params)
            alive = await cur.fetchone()
            if alive is None:
                # The leader reaped us (a long stall, a network cut): our jobs
                # were already rescued; come back as a fresh registration.
                self.log.warning("worker.reregistered", worker_id=self.worker_id)
                await conn.execute(sql.query("register_worker", self.schema),
                                   self.register_params)
        self.beats += 1
        for job_id in flagged:
            self.on_cancel_requested(job_id)
