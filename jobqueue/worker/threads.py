"""The thread pool of sync handlers: threads that pull jobs, results that come back in batches.

``run_in_executor`` would cost a concurrent future, an asyncio future and a
wake-up of the event loop (a write to its self-pipe) for every job. Here a
fixed set of threads pulls calls from one queue, and a finished call's result
joins a list that the loop takes in one callback: one wake-up however many
jobs finished meanwhile. Each call runs in the context it was submitted from
(copied), so a handler's structlog lines carry its job's ids.
"""

from __future__ import annotations

import asyncio
import contextvars
import queue
import threading
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

K = TypeVar("K")
R = TypeVar("R")


class ThreadRunner(Generic[K, R]):
    """``size`` threads; ``deliver`` gets ``[(key, result), ...]`` on ``loop``.

    A call must not raise: it turns every failure into its result.
    """

    def __init__(self, size: int, loop: asyncio.AbstractEventLoop,
                 deliver: Callable[[list[tuple[K, R]]], None], name: str = "jobqueue") -> None:
        self._calls: queue.SimpleQueue[tuple[K, contextvars.Context, Callable[[], R]] | None] = \
            queue.SimpleQueue()
        self._results: deque[tuple[K, R]] = deque()
        self._loop = loop
        self._deliver = deliver
        self._scheduled = False
        self._lock = threading.Lock()
        self._busy = 0
        # Daemon threads: a handler still running when the worker exits must not
        # keep the process alive (its job is released or rescued).
        self._threads = [threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True)
                         for i in range(size)]
        for thread in self._threads:
            thread.start()

    @property
    def busy(self) -> int:
        with self._lock:
            return self._busy

    def submit(self, key: K, call: Callable[[], R]) -> None:
        self._calls.put((key, contextvars.copy_context(), call))

    def _work(self) -> None:
        while (item := self._calls.get()) is not None:
            key, context, call = item
            with self._lock:
                self._busy += 1
            try:
                result = context.run(call)
            finally:
                with self._lock:
                    self._busy -= 1
            self._results.append((key, result))
            if not self._scheduled:
                # Reset by the loop before it drains, so no result is left behind.
                self._scheduled = True
                try:
                    self._loop.call_soon_threadsafe(self._drain)
                except RuntimeError:  # the loop is closed: the worker is gone
                    return

    def _drain(self) -> None:
        self._scheduled = False
        batch: list[tuple[K, R]] = []
        while self._results:
            batch.append(self._results.popleft())
        if batch:
            self._deliver(batch)

    def close(self) -> None:
        """Let the threads end once their current call returns (they do not block exit)."""
        for _ in self._threads:
            self._calls.put(None)
