"""The listener: a dedicated LISTEN connection that wakes the fetcher.

LISTEN needs a session of its own (it cannot share a pooled connection, and
it cannot go through PgBouncer in transaction mode). When the connection
drops, the listener reports ``listener.degraded``, the fetcher polls faster,
and the listener reconnects with backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg import sql as pgsql

from jobqueue import sql
from jobqueue.worker.service import Backoff, Service


def application_name() -> str:
    """How this worker's sessions appear in pg_stat_activity (unless the DSN names them).

    It lets an operator (and the fault tests) tell which sessions belong to
    which worker process, e.g. to see or cut them.
    """
    return f"jobqueue-worker-{os.getpid()}"


class Listener(Service):
    name = "listener"

    def __init__(self, dsn: str, schema: str, channel: str, worker_id: str,
                 queues: tuple[str, ...], on_notify: Callable[[], None],
                 on_health: Callable[[bool], None], log: Any, *,
                 check_interval: float = 1.0, connect_timeout: float = 5.0) -> None:
        super().__init__()
        self.dsn = dsn
        self.schema = schema
        self.channel = channel
        self.worker_id = worker_id
        self.queues = frozenset(queues)
        self.on_notify = on_notify
        self.on_health = on_health
        self.log = log
        self.check_interval = check_interval
        self.connect_timeout = connect_timeout
        self.healthy = False
        self.connected = asyncio.Event()
        self.notifications = 0
        self._conn: psycopg.AsyncConnection[Any] | None = None

    async def run(self) -> None:
        backoff = Backoff()
        while not self.stopping:
            try:
                await self._listen(backoff)
            except psycopg.Error as exc:
                self._set_health(False, str(exc).strip().splitlines()[0] if str(exc) else "")
                await self.sleep(backoff.next())
            finally:
                await self._close()

    async def _listen(self, backoff: Backoff) -> None:
        conn = await psycopg.AsyncConnection.connect(
            self.dsn, autocommit=True, connect_timeout=max(1, int(self.connect_timeout)),
            fallback_application_name=application_name())
        self._conn = conn
        await conn.execute(pgsql.SQL("LISTEN {}").format(pgsql.Identifier(self.channel)))
        await conn.execute(sql.query("set_worker_session", self.schema),
                           {"worker_id": self.worker_id})
        backoff.reset()
        self._set_health(True)
        self.connected.set()
        self.on_notify()  # catch up on anything committed while we were not listening
        while not self.stopping:
            async for note in conn.notifies(timeout=self.check_interval):
                self.notifications += 1
                if note.payload in self.queues:
                    self.on_notify()
            if conn.closed or conn.broken:
                raise psycopg.OperationalError("LISTEN connection lost")

    def _set_health(self, healthy: bool, error: str = "") -> None:
        if healthy == self.healthy:
            return
        self.healthy = healthy
        if healthy:
            self.log.info("listener.connected", channel=self.channel)
        else:
            self.connected.clear()
            self.log.warning("listener.degraded", error=error, fallback="polling")
        self.on_health(healthy)

    async def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.closed:
            with contextlib.suppress(Exception):  # closing a broken connection may fail
                await conn.close()

    async def stop(self, timeout: float = 5.0) -> None:
        # notifies() blocks for up to check_interval and holds nothing that
        # needs a clean finish: cancel it rather than wait.
        await super().stop(timeout=0)
