"""The small-service shape every background loop of the worker shares.

A service is started, runs one loop in its own asyncio task, and is stopped:
``stop()`` asks the loop to finish its current step and waits for it, so each
service can be started and stopped alone in a test.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

from jobqueue.errors import DatabaseError


class Service:
    """Base class: subclasses implement :meth:`run` and check :attr:`stopping`."""

    name = "service"
    #: Services that bring work in (claims, cron ticks): a stopping worker stops
    #: them first, before it waits for its jobs in flight.
    intake = False

    def __init__(self) -> None:
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        # Called with the exception if run() ends with one: a loop that dies
        # silently would leave a worker that looks alive but does nothing.
        self.on_crash: Callable[[Service, BaseException], None] | None = None

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def run(self) -> None:
        raise NotImplementedError

    def start(self) -> None:
        if self._task is not None:
            raise RuntimeError(f"{self.name} already started")
        self._task = asyncio.get_running_loop().create_task(self.run(), name=self.name)
        self._task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None and self.on_crash is not None:
            self.on_crash(self, exc)

    async def stop(self, timeout: float = 5.0) -> None:
        """Ask the loop to end, wait up to ``timeout``, then cancel it."""
        self._stop.set()
        self.wake()
        task = self._task
        if task is None or task.done():
            if task is not None and not task.cancelled():
                task.exception()  # retrieve it so asyncio does not warn
            return
        done = (await asyncio.wait({task}, timeout=timeout))[0] if timeout > 0 else set()
        if not done:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def every(self, interval: Callable[[], float], step: Callable[[], Awaitable[object]],
                    log: Any, failed: str) -> None:
        """Run ``step`` every ``interval()`` seconds until stopped. A database error is
        logged as ``failed`` and the loop goes on: the next round is the retry."""
        while not self.stopping:
            await self.sleep(interval())
            if self.stopping:
                return
            try:
                await step()
            except DatabaseError as exc:
                log.warning(failed, error=str(exc))

    def wake(self) -> None:
        """Interrupt a :meth:`sleep` early (subclasses with their own events override)."""

    async def sleep(self, seconds: float, *events: asyncio.Event) -> None:
        """Sleep up to ``seconds``, returning early when stopping or any event is set."""
        waits: list[asyncio.Future[Any]] = [asyncio.ensure_future(self._stop.wait())]
        waits += [asyncio.ensure_future(e.wait()) for e in events]
        try:
            await asyncio.wait(waits, timeout=max(seconds, 0), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()


class Backoff:
    """Capped exponential delays for reconnect loops: 0.1 s, 0.2 s ... up to ``cap``."""

    def __init__(self, first: float = 0.1, cap: float = 5.0) -> None:
        self.first = first
        self.cap = cap
        self.failures = 0

    def next(self) -> float:
        delay = min(self.cap, self.first * 2.0**self.failures)
        self.failures += 1
        return delay

    def reset(self) -> None:
        self.failures = 0
