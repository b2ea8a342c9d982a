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
import hashlib
import os
import time
from collections.abc import Awaitable, Callable
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


def probe_channel(schema: str, worker_id: str) -> str:
    """A channel only this worker listens on, so probes never wake the fleet.

    Hashed to stay within Postgres's 63-byte identifiers whatever the names.
    """
    digest = hashlib.blake2b(f"{schema}\0{worker_id}".encode(), digest_size=8).hexdigest()
    return f"jobqueue_probe_{digest}"


class ListenerSilentError(psycopg.OperationalError):
    """The LISTEN connection did not deliver a probe in time: treat it as lost."""


class Listener(Service):
    name = "listener"

    def __init__(self, dsn: str, schema: str, channel: str, worker_id: str,
                 queues: tuple[str, ...], on_notify: Callable[[], None],
                 on_health: Callable[[bool], None], log: Any, *,
                 check_interval: float = 1.0, connect_timeout: float = 5.0,
                 control_channel: str | None = None,
                 on_control: Callable[[str], None] | None = None,
                 send_probe: Callable[[str, str], Awaitable[None]] | None = None,
                 probe_interval: float = 5.0, probe_timeout: float = 5.0) -> None:
        super().__init__()
        # send_probe(channel, payload) sends a NOTIFY from another session;
        # without it the listener cannot check itself and only sees errors.
        self.send_probe = send_probe
        self.probe_channel = probe_channel(schema, worker_id)
        self.probe_interval = probe_interval
        self.probe_timeout = probe_timeout
        self.probe_seconds: float | None = None  # round trip of the last probe
        self.probes = 0
        self.degradations = 0
        self._probe: tuple[str, float] | None = None  # (payload, sent at) awaiting return
        self._next_probe = 0.0
        self._down_since: float | None = None
        self.dsn = dsn
        self.schema = schema
        self.channel = channel
        self.control_channel = control_channel
        self.on_control = on_control
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
        if self.control_channel:
            await conn.execute(pgsql.SQL("LISTEN {}").format(
                pgsql.Identifier(self.control_channel)))
        if self.send_probe is not None:
            await conn.execute(pgsql.SQL("LISTEN {}").format(
                pgsql.Identifier(self.probe_channel)))
        await conn.execute(sql.query("set_worker_session", self.schema),
                           {"worker_id": self.worker_id})
        backoff.reset()
        self._set_health(True)
        self.connected.set()
        self.on_notify()  # catch up on anything committed while we were not listening
        self._probe, self._next_probe = None, time.monotonic()  # probe the new session now
        while not self.stopping:
            async for note in conn.notifies(timeout=self._wait()):
                if note.channel == self.probe_channel:
                    self._probe_returned(note.payload)
                    continue
                self.notifications += 1
                if note.channel == self.control_channel:
                    if self.on_control is not None:
                        self.on_control(note.payload)
                elif note.payload in self.queues:
                    self.on_notify()
            if conn.closed or conn.broken:
                raise psycopg.OperationalError("LISTEN connection lost")
            await self._check_probe()

    def _wait(self) -> float:
        """How long to wait for notifications before looking at the probe again."""
        if self.send_probe is None:
            return self.check_interval
        until = self._next_probe if self._probe is None else self._probe[1] + self.probe_timeout
        return max(0.0, min(self.check_interval, until - time.monotonic()))

    def _probe_returned(self, payload: str) -> None:
        if self._probe is not None and payload == self._probe[0]:
            self.probe_seconds = time.monotonic() - self._probe[1]
            self._probe = None

    async def _check_probe(self) -> None:
        if self.send_probe is None:
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
            await asyncio.wait_for(self.send_probe(self.probe_channel, payload),
                                   self.probe_timeout)
        except (psycopg.Error, asyncio.TimeoutError, OSError) as exc:
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
