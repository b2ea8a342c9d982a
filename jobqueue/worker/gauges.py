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

Behind a transaction pooler there is no session to hold a lock in (it would
stay on a server connection that other clients use next). There each round
is a transaction that takes the lock for itself only: no two workers read the
gauges at once, but every worker with metrics reads them in its own rounds,
so the query's cost grows with the fleet, and each exports the numbers (take
``max`` across workers rather than ``sum``).
"""

from __future__ import annotations

import contextlib
from typing import Any

import psycopg

from jobqueue.db import admin, fleet
from jobqueue.db.statement import Procedure, in_transaction
from jobqueue.db.store import AsyncStore
from jobqueue.errors import DatabaseError
from jobqueue.metrics import Snapshot, WorkerMetrics
from jobqueue.protocol import advisory_key
from jobqueue.worker.listener import application_name
from jobqueue.worker.service import Backoff, Service


def gauge_leader_key(schema: str) -> int:
    return advisory_key(schema, "gauges")


def _snapshot(worker_timeout: float) -> Procedure[Snapshot]:
    queues = yield admin.queue_overview(worker_timeout)
    workers = yield fleet.worker_heartbeats()
    return Snapshot(queues=queues, workers=workers)


def _round(key: int, worker_timeout: float) -> Procedure[Snapshot | None]:
    """A round under a transaction-scoped lock (run in a transaction); None: another
    worker is reading the gauges right now."""
    if not (yield fleet.try_leadership(key)):
        return None
    return (yield from _snapshot(worker_timeout))


class GaugeRefresher(Service):
    name = "gauges"

    def __init__(self, store: AsyncStore, metrics: WorkerMetrics, log: Any, *,
                 interval: float, worker_timeout: float) -> None:
        super().__init__()
        self.store = store
        self.metrics = metrics
        self.log = log
        self.interval = interval
        self.worker_timeout = worker_timeout
        self.key = gauge_leader_key(store.schema)
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
                except DatabaseError as exc:
                    await self._lost(str(exc))
                    delay = backoff.next()
                await self.sleep(delay)
        finally:
            await self._close()
            self.metrics.leader = False
            self.metrics.set_snapshot(None)

    async def refresh(self) -> bool:
        """One round: become (or stay) the leader, and if so read the gauges."""
        if self.store.settings.pooled:
            snapshot = await self.store.run(in_transaction(_round(self.key, self.worker_timeout)))
            if snapshot is None:
                return False
            self.metrics.leader = True
        else:
            if self._conn is None or self._conn.closed:
                # The lock is session-scoped: this connection is kept for it alone.
                self._conn = await self.store.connect(
                    autocommit=True, fallback_application_name=application_name())
            conn = self._conn
            if not self.metrics.leader:
                if not await self.store.run(fleet.try_session_leadership(self.key), conn):
                    return False
                self.metrics.leader = True
                self.log.info("gauges.leader", note="this worker refreshes the queue gauges")
            snapshot = await self.store.run(_snapshot(self.worker_timeout), conn)
        self.metrics.set_snapshot(snapshot)
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
