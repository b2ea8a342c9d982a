"""The gauge leader: one worker of the fleet reads the queue gauges from SQL.

Depth, age, throughput and heartbeats need a query over the jobs tables.
Running it per scrape, on every worker, would multiply the cost by the fleet
size and the scrape rate; instead the worker that holds a session advisory
lock runs :func:`~jobqueue.overview.queue_overview` every ``interval`` seconds
and exports the result, and the others export none of it.

The lock is session-scoped on a connection this service keeps for it alone:
the leader stays leader while its session lives, and when it ends (the worker
stops, crashes or loses the connection) Postgres releases the lock and the
next worker to try, within one interval, takes over.
"""

from __future__ import annotations

import contextlib
import hashlib
from typing import Any

import psycopg

from jobqueue import sql
from jobqueue.metrics import Snapshot, WorkerBeat, WorkerMetrics
from jobqueue.overview import queue_overview_async
from jobqueue.worker.listener import application_name
from jobqueue.worker.service import Backoff, Service


def gauge_leader_key(schema: str) -> int:
    digest = hashlib.blake2b(f"jobqueue:{schema}:gauges".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


class GaugeRefresher(Service):
    name = "gauges"

    def __init__(self, dsn: str, schema: str, metrics: WorkerMetrics, log: Any, *,
                 interval: float = 10.0, worker_timeout: float = 30.0,
                 connect_timeout: float = 5.0) -> None:
        super().__init__()
        self.dsn = dsn
        self.schema = schema
        self.metrics = metrics
        self.log = log
        self.interval = interval
        self.worker_timeout = worker_timeout
        self.connect_timeout = connect_timeout
        self.key = gauge_leader_key(schema)
        self.refreshes = 0
        self._conn: psycopg.AsyncConnection[Any] | None = None

    async def run(self) -> None:
        backoff = Backoff(first=0.5, cap=self.interval)
        try:
            while not self.stopping:
                try:
                    await self.refresh()
                    backoff.reset()
                    delay = self.interval
                except psycopg.Error as exc:
                    await self._lost(str(exc).strip().splitlines()[0] if str(exc).strip()
                                     else type(exc).__name__)
                    delay = backoff.next()
                await self.sleep(delay)
        finally:
            await self._close()
            self.metrics.leader = False
            self.metrics.set_snapshot(None)

    async def refresh(self) -> bool:
        """One round: become (or stay) the leader, and if so read the gauges."""
        if self._conn is None or self._conn.closed:
            self._conn = await psycopg.AsyncConnection.connect(
                self.dsn, autocommit=True, connect_timeout=max(1, int(self.connect_timeout)),
                fallback_application_name=application_name())
        conn = self._conn
        if not self.metrics.leader:
            cur = await conn.execute(sql.query("try_session_leadership", self.schema),
                                     {"key": self.key})
            row = await cur.fetchone()
            if not row or not row[0]:
                return False
            self.metrics.leader = True
            self.log.info("gauges.leader", note="this worker refreshes the queue gauges")
        queues = await queue_overview_async(conn, self.schema, self.worker_timeout)
        cur = await conn.execute(sql.query("worker_heartbeats", self.schema))
        workers = [WorkerBeat(id=r[0], hostname=r[1], pid=r[2], queues=list(r[3]),
                              heartbeat_at=r[4], age=r[5]) for r in await cur.fetchall()]
        self.metrics.set_snapshot(Snapshot(queues=queues, workers=workers))
        self.refreshes += 1
        return True

    async def _lost(self, error: str) -> None:
        # Without its session the lock is gone too: stop exporting numbers that
        # another worker may now be the one to refresh.
        if self.metrics.leader:
            self.log.warning("gauges.lost", error=error)
        self.metrics.leader = False
        self.metrics.set_snapshot(None)
        await self._close()

    async def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.closed:
            with contextlib.suppress(Exception):  # closing a broken connection may fail
                await conn.close()
