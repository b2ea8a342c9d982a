"""The systems under test: the raw SQL floor, jobqueue, and the peers.

A :class:`Target` is one system in one configuration (a "row" of a table). It
owns a fresh store for the length of a scenario (:meth:`setup` /
:meth:`teardown`), knows how to enqueue the way each scenario asks, and names
the module whose ``work(spec, probe)`` runs its worker in a child process.
Every target's handler is the same no-op (``probe.started(seq)``). A peer
that is not Python (Graphile Worker) overrides :meth:`Target.drain_once`
instead: its own process stores and drains, and reports the same counts.
"""

from __future__ import annotations

import importlib.util
import time
from dataclasses import dataclass
from typing import Any, ClassVar


@dataclass
class LatencySample:
    seq: int
    enqueued: float  # time.time() just before the job's transaction began
    committed: float  # time.time() when its COMMIT returned


class Target:
    """Base class; the methods a scenario does not use may stay unimplemented."""

    name: ClassVar[str]
    worker_module: ClassVar[str]
    requires: ClassVar[tuple[str, ...]] = ()

    def __init__(self, dsn: str, variant: str = "") -> None:
        self.dsn = dsn
        self.variant = variant
        # Jobs enqueued so far by the running producer (read by the soak's sampler).
        self.enqueued = 0

    @classmethod
    def available(cls) -> bool:
        return all(importlib.util.find_spec(mod) is not None for mod in cls.requires)

    def label(self, scenario: str) -> str:
        return self.name

    def settings(self, scenario: str) -> str:
        return ""

    # -- the store ------------------------------------------------------------------------

    def setup(self) -> None:
        raise NotImplementedError

    def teardown(self) -> None:
        raise NotImplementedError

    def jobs_table(self) -> tuple[str, str, str]:
        """(dsn, schema, table) of the table whose dead tuples the soak watches."""
        raise NotImplementedError

    def pending(self) -> dict[str, int]:
        """Jobs not finished (and anything failed): all zero once a drain is complete."""
        raise NotImplementedError

    def stored(self) -> int:
        """Jobs stored, for checking what an enqueue scenario wrote."""
        raise NotImplementedError

    # -- enqueueing ------------------------------------------------------------------------

    def preload(self, n: int) -> None:
        """Store ``n`` ready jobs (seq 0..n-1) by the fastest way the target has."""
        raise NotImplementedError

    def bulk(self, n: int, batch: int) -> None:
        """Enqueue ``n`` jobs in batches of ``batch``, one transaction per batch."""
        raise NotImplementedError

    def enqueue_tx(self, n: int, clients: int) -> None:
        """``clients`` concurrent connections, one job per transaction, ``n`` in all."""
        raise NotImplementedError

    def enqueue_one(self, n: int) -> float:
        """One client, ``n`` jobs, each its own transaction with autocommit semantics;
        the seconds the ``n`` enqueues took (connecting and warming up excluded)."""
        raise NotImplementedError

    def latency_produce(self, first_seq: int, count: int,
                        interval: float) -> list[LatencySample]:
        """One job every ``interval`` seconds, each in its own transaction."""
        raise NotImplementedError

    def soak_produce(self, rate: float, seconds: float, tick: float) -> int:
        """Enqueue ``rate`` jobs/s for ``seconds``, one batch (one transaction) per tick;
        keeps :attr:`enqueued` current; returns the number enqueued."""
        raise NotImplementedError

    # -- the worker ----------------------------------------------------------------------

    def worker_spec(self, scenario: str, mode: str, record_starts: bool = False) -> dict[str, Any]:
        """What the child needs; ``mode`` is ``burst`` (drain, then return) or ``serve``."""
        raise NotImplementedError

    def drain_once(self, n: int, timeout: float) -> dict[str, Any]:
        """Store ``n`` jobs (:meth:`preload`, untimed), then drain them with one worker
        process in burst mode. The child's report (``started``, ``first_start``,
        ``ended`` as ``time.time()``, ``handled``) plus ``preload_seconds``."""
        from benchmarks.child import WorkerProcess

        stored = time.perf_counter()
        self.preload(n)
        preload_seconds = time.perf_counter() - stored
        worker = WorkerProcess(self.worker_module, self.worker_spec("drain", "burst")).start()
        return {**worker.finish(timeout), "preload_seconds": preload_seconds}


def paced(interval: float) -> Any:
    """A generator that sleeps so that its n-th step starts at ``start + n * interval``.

    A step that overran is not made up for by a burst: the schedule restarts.
    """
    import time

    next_at = time.monotonic()
    while True:
        now = time.monotonic()
        if next_at > now:
            time.sleep(next_at - now)
        elif now - next_at > interval:
            next_at = now
        yield
        next_at += interval


async def apaced(interval: float) -> Any:
    """:func:`paced` for a coroutine."""
    import asyncio
    import time

    next_at = time.monotonic()
    while True:
        now = time.monotonic()
        if next_at > now:
            await asyncio.sleep(next_at - now)
        elif now - next_at > interval:
            next_at = now
        yield
        next_at += interval
