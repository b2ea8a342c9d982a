"""The listener: a dedicated LISTEN connection that wakes the fetcher.

LISTEN needs a session of its own (it cannot share a pooled connection, and
it cannot go through PgBouncer in transaction mode). When the connection
drops, the listener reports ``listener.degraded``, the fetcher polls faster,
and the listener reconnects with backoff.

A LISTEN connection can also fail silently: a network path that drops packets
without a reset, a hung proxy, a server process that stops answering. Nothing
errors, no notification ever arrives, and the worker would wait for the poll
timer forever while believing it is woken at once. So the listener checks
itself: every ``probe_interval`` seconds it sends a NOTIFY (through the
worker's pool, another session) on a channel of its own, and if that probe has
not come back within ``probe_timeout`` it treats the connection as lost:
``listener.degraded``, faster polling, reconnect, then ``listener.recovered``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable
from typing import Any

import psycopg

from jobqueue.db import fleet
from jobqueue.db.statement import Procedure, listen
from jobqueue.db.store import AsyncStore
from jobqueue.errors import DatabaseError
from jobqueue.protocol import control_channel, job_channel, probe_channel
from jobqueue.worker.service import Backoff, Service
from jobqueue.worker.state import WorkerState


def application_name() -> str:
    """How this worker's sessions appear in pg_stat_activity (unless the DSN names them).

    It lets an operator (and the fault tests) tell which sessions belong to
    which worker process, e.g. to see or cut them.
    """
    return f"jobqueue-worker-{os.getpid()}"


class ListenerSilentError(DatabaseError):
    """The LISTEN connection did not deliver a probe in time: treat it as lost."""


def _subscribe(channels: list[str], worker_id: str) -> Procedure[None]:
    for channel in channels:
        yield listen(channel)
    yield fleet.set_session(worker_id)


class Listener(Service):
    name = "listener"

    def __init__(self, store: AsyncStore, state: WorkerState, queues: tuple[str, ...],
                 on_control: Callable[[str], None], log: Any, *,
                 listen_dsn: str | None = None, check_interval: float = 1.0,
                 probe_interval: float = 5.0, probe_timeout: float = 5.0,
                 probe: bool = True) -> None:
        super().__init__()
        # Where to LISTEN: the store's database unless told otherwise.
        self.listen_dsn = listen_dsn
        schema = store.schema
        self.store = store
        self.state = state
        # With probe, the listener checks itself with a NOTIFY sent through the
        # store's pool (another session); without it it only sees errors.
        self.probe = probe
        self.probe_channel = probe_channel(schema, state.worker_id)
        self.probe_interval = probe_interval
        self.probe_timeout = probe_timeout
        self.probe_seconds: float | None = None  # round trip of the last probe
        self.probes = 0
        self.degradations = 0
        self._probe: tuple[str, float] | None = None  # (payload, sent at) awaiting return
        self._next_probe = 0.0
        self._down_since: float | None = None
        self.channel = job_channel(schema)
        self.control_channel = control_channel(schema)
        self.on_control = on_control
        self.queues = frozenset(queues)
        self.log = log
        self.check_interval = check_interval
        self.healthy = False
        self.connected = asyncio.Event()
        self.notifications = 0
        self._conn: psycopg.AsyncConnection[Any] | None = None

    async def run(self) -> None:
        backoff = Backoff()
        while not self.stopping:
            try:
                await self._listen(backoff)
            except DatabaseError as exc:
                self._set_health(False, str(exc))
                await self.sleep(backoff.next())
            finally:
                await self._close()

    async def _listen(self, backoff: Backoff) -> None:
        # LISTEN needs a session of its own: not a pooled connection, and not
        # one through PgBouncer in transaction mode.
        conn = await self.store.connect(self.listen_dsn, autocommit=True,
                                        fallback_application_name=application_name())
        self._conn = conn
        channels = [self.channel, self.control_channel]
        if self.probe:
            channels.append(self.probe_channel)
        await self.store.run(_subscribe(channels, self.state.worker_id), conn)
        backoff.reset()
        self._set_health(True)
        self.connected.set()
        self.state.wake_fetcher()  # catch up on anything committed while we were not listening
        self._probe, self._next_probe = None, time.monotonic()  # probe the new session now
        while not self.stopping:
            with self.store.errors():
                await self._receive(conn)
            if conn.closed or conn.broken:
                raise DatabaseError("database unavailable: LISTEN connection lost")
            await self._check_probe()

    async def _receive(self, conn: psycopg.AsyncConnection[Any]) -> None:
        async for note in conn.notifies(timeout=self._wait()):
            if note.channel == self.probe_channel:
                self._probe_returned(note.payload)
                continue
            self.notifications += 1
            if note.channel == self.control_channel:
                self.on_control(note.payload)
            elif note.payload in self.queues:
                self.state.wake_fetcher()

    def _wait(self) -> float:
        """How long to wait for notifications before looking at the probe again."""
        if not self.probe:
            return self.check_interval
        until = self._next_probe if self._probe is None else self._probe[1] + self.probe_timeout
        return max(0.0, min(self.check_interval, until - time.monotonic()))

    def _probe_returned(self, payload: str) -> None:
        if self._probe is not None and payload == self._probe[0]:
            self.probe_seconds = time.monotonic() - self._probe[1]
            self._probe = None

    async def _check_probe(self) -> None:
        if not self.probe:
            return
        now = time.monotonic()
        if self._probe is not None:
            if now - self._probe[1] < self.probe_timeout:
                return
            raise ListenerSilentError(
                f"LISTEN probe not delivered within {self.probe_timeout:g}s")
        if now < self._next_probe:
            return
        self.probes += 1
        payload = f"{self.probes}"
        self._next_probe = now + self.probe_interval
        try:
            await asyncio.wait_for(
                self.store.run(fleet.probe_notify(self.probe_channel, payload)),
                self.probe_timeout)
        except (DatabaseError, asyncio.TimeoutError, OSError) as exc:
            # The other session failed, not necessarily this one: no verdict
            # this round (a database that is down breaks LISTEN soon enough).
            self.log.debug("listener.probe_unsent", error=str(exc).strip() or type(exc).__name__)
            return
        self._probe = (payload, now)

    def _set_health(self, healthy: bool, error: str = "") -> None:
        if healthy == self.healthy:
            return
        self.healthy = healthy
        if healthy:
            if self._down_since is None:
                self.log.info("listener.connected", channel=self.channel)
            else:
                self.log.info("listener.recovered", channel=self.channel,
                              down_for=round(time.monotonic() - self._down_since, 3))
                self._down_since = None
        else:
            self.connected.clear()
            self.degradations += 1
            self._down_since = time.monotonic()
            self.log.warning("listener.degraded", error=error, fallback="polling")
        self.state.listening = healthy

    async def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.closed:
            with contextlib.suppress(Exception):  # closing a broken connection may fail
                await conn.close()

    async def stop(self, timeout: float = 5.0) -> None:
        # notifies() blocks for up to check_interval and holds nothing that
        # needs a clean finish: cancel it rather than wait.
        await super().stop(timeout=0)
