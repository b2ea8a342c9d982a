"""A target's worker in a child process, and the parent's handle on it.

Every target's worker runs in a process of its own (multiprocessing, spawn),
as it would in production: its CPU, its RSS and its event loop are its own,
and the parent that enqueues and samples does not share a GIL with it.

The handler of every target is the same no-op: it calls :meth:`Probe.started`
with the job's ``seq``, which counts the call and, for the latency scenario,
records when the job started. The count is published to the parent through a
shared integer every few milliseconds (the soak reads it per window), so the
handler itself pays a lock and an increment, not an inter-process call.
"""

from __future__ import annotations

import contextlib
import importlib
import multiprocessing
import threading
import time
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from benchmarks.common import BenchmarkError

PUBLISH_INTERVAL = 0.02


class Probe:
    """What a worker's handler and its harness share inside the child."""

    def __init__(self, shared: Any, record_starts: bool) -> None:
        self._shared = shared
        self._record = record_starts
        self._lock = threading.Lock()
        self.handled = 0
        self.first_start: float | None = None
        self.starts: dict[int, float] = {}
        self.stop_requested = threading.Event()
        self._on_stop: list[Callable[[], None]] = []

    def started(self, seq: int) -> None:
        """Called by the no-op handler, from an event loop or a worker thread."""
        now = time.time()
        with self._lock:
            self.handled += 1
            if self.first_start is None:
                self.first_start = now
            if self._record:
                self.starts[seq] = now

    def on_stop(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` (from another thread) when the parent asks to stop."""
        self._on_stop.append(callback)
        if self.stop_requested.is_set():
            callback()

    def request_stop(self) -> None:
        self.stop_requested.set()
        for callback in list(self._on_stop):
            callback()

    def publish(self) -> None:
        self._shared.value = self.handled


def child_main(module: str, spec: dict[str, Any], shared: Any, conn: Connection) -> None:
    probe = Probe(shared, bool(spec.get("record_starts")))
    done = threading.Event()

    def watch_parent() -> None:
        try:
            if conn.recv() == "stop":
                probe.request_stop()
        except (EOFError, OSError):  # the parent is gone: stop too
            probe.request_stop()

    def publish() -> None:
        while not done.wait(PUBLISH_INTERVAL):
            probe.publish()

    threading.Thread(target=watch_parent, daemon=True).start()
    threading.Thread(target=publish, daemon=True).start()
    started = time.time()
    try:
        work = importlib.import_module(module).work
        info = work(spec, probe) or {}
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which fails the phase
        done.set()
        conn.send({"error": f"{type(exc).__name__}: {exc}",
                   "traceback": traceback.format_exc()})
        return
    ended = time.time()
    done.set()
    probe.publish()
    conn.send({"started": started, "ended": ended, "first_start": probe.first_start,
               "handled": probe.handled, "starts": probe.starts, "info": info})


class WorkerProcess:
    """The parent's handle: start, watch the count, stop, collect the result."""

    def __init__(self, module: str, spec: dict[str, Any]) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.shared = ctx.Value("q", 0, lock=False)  # written by the child only
        self._conn, child_conn = ctx.Pipe()
        self.process = ctx.Process(target=child_main, args=(module, spec, self.shared,
                                                            child_conn),
                                   name=f"bench-{module.rsplit('.', 1)[-1]}", daemon=True)
        self.result: dict[str, Any] | None = None

    def start(self) -> WorkerProcess:
        self.process.start()
        return self

    @property
    def pid(self) -> int:
        return self.process.pid or 0

    @property
    def handled(self) -> int:
        return int(self.shared.value)

    def wait_handled(self, n: int, timeout: float) -> bool:
        """Poll the published count until it reaches ``n`` (False on timeout)."""
        deadline = time.monotonic() + timeout
        while self.handled < n:
            if time.monotonic() > deadline or not self.process.is_alive():
                return self.handled >= n
            time.sleep(0.005)
        return True

    def finish(self, timeout: float) -> dict[str, Any]:
        """Wait for the worker to return by itself (burst/drain mode)."""
        if self.result is None:
            if not self._conn.poll(timeout):
                self.kill()
                raise BenchmarkError(f"{self.process.name} did not finish within {timeout:g}s")
            self.result = self._conn.recv()
            self.process.join(10)
        if "error" in self.result:
            raise BenchmarkError(f"{self.process.name} failed: {self.result['error']}\n"
                                 f"{self.result['traceback']}")
        return self.result

    def stop(self, timeout: float = 60.0) -> dict[str, Any]:
        """Ask the worker to stop gracefully and collect its result."""
        if self.result is None and self.process.is_alive():
            with contextlib.suppress(BrokenPipeError, OSError):
                self._conn.send("stop")
        return self.finish(timeout)

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(10)
