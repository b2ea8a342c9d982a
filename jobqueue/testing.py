"""jobqueue in your own test suite: run jobs in-process, see what was queued.

All of it works on the test database your suite already uses (real Postgres,
the same schema as in production), sync and async:

- :func:`drain` (:func:`drain_async`) runs every job that is ready, in this
  process, until the queues are idle, and returns how many succeeded, were
  retried and died. A retry waiting out its backoff is made due at once, so a
  test never sleeps through it; a job scheduled for later stays scheduled unless
  ``scheduled=True``.
- :func:`enqueued` (:func:`enqueued_async`) lists the live jobs, filtered by
  task, queue and a subset of their args.
- :class:`inline` runs each job as soon as the transaction that enqueued it
  commits, and never when it rolls back (an eager mode that ran the job at
  once would run it for a transaction that later rolls back).

How :class:`inline` knows of a COMMIT: from Postgres. Enqueueing a ready job
sends a NOTIFY in the enqueuing transaction, Postgres delivers a NOTIFY only
once that transaction has committed (a rollback discards it), and it delivers
it to the sending session too when that session listens. So inline LISTENs on
the connection an enqueue used (inside the caller's transaction: the LISTEN also
takes effect at COMMIT) and psycopg calls its handler while it reads the
COMMIT's reply, before ``commit()`` returns. An enqueue on jobqueue's own
connection, or on one in autocommit, has committed already: its jobs run before
``enqueue`` returns. The jobs run in a worker thread of this process (its own
connections); an async caller's event loop waits for them.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import pq

from jobqueue.app import JobQueue
from jobqueue.db.drivers import async_connection, sync_connection
from jobqueue.db.statement import listen
from jobqueue.db.testing import advance_due, live_jobs, live_queues
from jobqueue.protocol import job_channel
from jobqueue.registry import TaskRef, task_name
from jobqueue.rows import JobId, JobInfo, QueueName
from jobqueue.worker import Worker, WorkerConfig

__all__ = ["DrainError", "Drained", "drain", "drain_async", "enqueued", "enqueued_async",
           "inline"]

#: Drain rounds before :class:`DrainError`: each round runs what is ready, so a job
#: retried N times needs N rounds.
MAX_ROUNDS = 100
#: Seconds a drain may take before :class:`DrainError` (a job that re-enqueues
#: itself keeps a round busy forever).
DRAIN_TIMEOUT = 60.0


class DrainError(AssertionError):
    """The queues did not become idle: something keeps enqueueing or retrying."""


@dataclass(frozen=True)
class Drained:
    """What a drain ran: attempts that succeeded, were retried, and jobs that died."""

    succeeded: int = 0
    retried: int = 0
    dead: int = 0

    @property
    def total(self) -> int:
        return self.succeeded + self.retried + self.dead

    def __add__(self, other: Drained) -> Drained:
        return Drained(self.succeeded + other.succeeded, self.retried + other.retried,
                       self.dead + other.dead)


class _Rounds:
    """The drain's loop, shared by its sync and async faces (only the I/O differs)."""

    def __init__(self, queues: Sequence[str] | None, scheduled: bool, concurrency: int,
                 max_rounds: int, timeout: float) -> None:
        self.only = tuple(queues) if queues else None
        self.scheduled, self.concurrency = scheduled, concurrency
        self.left = max_rounds
        self.deadline = time.monotonic() + timeout
        self.total = Drained()

    def remaining(self) -> float:
        """Seconds the round may run before its worker is told to stop."""
        return max(0.0, self.deadline - time.monotonic())

    def queues(self, live: list[QueueName]) -> tuple[str, ...]:
        names = tuple(row.queue for row in live)
        return tuple(q for q in names if q in self.only) if self.only else names

    def config(self, names: tuple[str, ...]) -> WorkerConfig:
        # A burst worker runs what is ready and stops; prefetch 0 leaves nothing
        # claimed for a round that is over.
        return WorkerConfig(queues=names, concurrency=self.concurrency, prefetch=0,
                            burst=True, handle_signals=False, poll_interval=0.05)

    def done(self, moved: list[JobId], worker: Worker) -> bool:
        """Count the round; True once a round ran nothing and made nothing due."""
        stats = worker.stats
        ran = Drained(stats["succeeded"], stats["retried"], stats["dead"])
        self.total += ran
        if not self.remaining():
            raise DrainError(f"the queues were not idle within the drain's timeout, "
                             f"after {self.total} (a job that keeps enqueueing?)")
        if not ran.total and not moved:
            return True
        self.left -= 1
        if self.left < 0:
            raise DrainError(f"the queues were not idle after {self.total} in the "
                             "rounds allowed (a job that keeps enqueueing or failing?)")
        return False


def drain(app: JobQueue, *, queues: Sequence[str] | None = None, scheduled: bool = False,
          concurrency: int = 1, max_rounds: int = MAX_ROUNDS,
          timeout: float = DRAIN_TIMEOUT) -> Drained:
    """Run every ready job of ``app`` (of ``queues``, default all) in this process
    until none is left to run; retries waiting for their backoff are made due at
    once, and jobs scheduled for later too with ``scheduled``. DrainError when
    the queues are not idle after ``max_rounds`` or ``timeout`` seconds."""
    rounds = _Rounds(queues, scheduled, concurrency, max_rounds, timeout)
    while True:
        names = rounds.queues(app.store.run(live_queues()))
        if not names:
            return rounds.total
        moved: list[JobId] = app.store.run(advance_due(names, scheduled))
        worker = app.worker(rounds.config(names))
        # A graceful stop at the deadline: the running job finishes and is acked.
        timer = threading.Timer(rounds.remaining(), worker.request_stop)
        timer.start()
        try:
            _run(worker)
        finally:
            timer.cancel()
        if rounds.done(moved, worker):
            return rounds.total


def _run(worker: Worker) -> None:
    """``worker.run()``, in a thread of its own where this one runs an event loop
    already (Playwright's sync API, a notebook): asyncio.run() cannot nest."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        worker.run()
        return
    failed: list[BaseException] = []

    def target() -> None:
        try:
            worker.run()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            failed.append(exc)

    thread = threading.Thread(target=target, name="jobqueue-drain", daemon=True)
    thread.start()
    thread.join()
    if failed:
        raise failed[0]


async def drain_async(app: JobQueue, *, queues: Sequence[str] | None = None,
                      scheduled: bool = False, concurrency: int = 1,
                      max_rounds: int = MAX_ROUNDS,
                      timeout: float = DRAIN_TIMEOUT) -> Drained:
    """:func:`drain` in the caller's event loop."""
    rounds = _Rounds(queues, scheduled, concurrency, max_rounds, timeout)
    while True:
        names = rounds.queues(await app.astore.run(live_queues()))
        if not names:
            return rounds.total
        moved: list[JobId] = await app.astore.run(advance_due(names, scheduled))
        worker = app.worker(rounds.config(names))
        timer = asyncio.get_running_loop().call_later(rounds.remaining(), worker.request_stop)
        try:
            await worker.run_async()
        finally:
            timer.cancel()
        if rounds.done(moved, worker):
            return rounds.total


def enqueued(app: JobQueue, task: TaskRef | None = None, *, queue: str | None = None,
             args: Mapping[str, Any] | None = None, conn: Any = None) -> list[JobInfo]:
    """The live jobs (queued, scheduled, waiting or running), oldest first: of
    ``task`` and ``queue`` if given, whose args contain ``args`` (a subset, compared
    as JSON). With ``conn``, what that transaction sees (its own uncommitted jobs)."""
    found: list[JobInfo] = app.store.run(
        live_jobs(None if task is None else task_name(task), queue, args), conn)
    return found


async def enqueued_async(app: JobQueue, task: TaskRef | None = None, *,
                         queue: str | None = None, args: Mapping[str, Any] | None = None,
                         conn: Any = None) -> list[JobInfo]:
    found: list[JobInfo] = await app.astore.run(
        live_jobs(None if task is None else task_name(task), queue, args), conn)
    return found


class inline:
    """Within ``with inline(app):`` (or ``async with``) a job runs when the
    transaction that enqueued it commits, before ``commit()`` returns; never for
    one that rolls back. ``.drained`` adds up what ran.

    Limits: the jobs of a commit run in a worker of this process while the
    committing thread (an async caller's event loop too) waits; a LISTEN
    stays on the connections used (harmless; they are a test's).
    """

    def __init__(self, app: JobQueue, *, concurrency: int = 1) -> None:
        self.app = app
        self.concurrency = concurrency
        self.drained = Drained()
        self.channel = job_channel(app.schema)
        self._hooked: dict[int, tuple[Any, Any]] = {}  # id(conn) -> (conn, handler)
        self._lock = threading.Lock()

    # -- the context --------------------------------------------------------------------

    def __enter__(self) -> inline:
        self.app.observers.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        self.app.observers.remove(self)
        for conn, handler in self._hooked.values():
            conn.remove_notify_handler(handler)
        self._hooked.clear()

    async def __aenter__(self) -> inline:
        return self.__enter__()

    async def __aexit__(self, *exc: object) -> None:
        self.__exit__(*exc)

    # -- told of each enqueue (jobqueue.app.EnqueueObserver) ----------------------------

    def enqueued(self, conn: Any) -> None:
        if conn is None:
            self._run()  # jobqueue's own connection: committed already
            return
        raw = sync_connection(conn)
        if raw.info.transaction_status == pq.TransactionStatus.IDLE:
            self._run()  # autocommit: committed already
        elif id(raw) not in self._hooked:
            self.app.store.run(listen(self.channel), raw)
            self._hook(raw)

    async def enqueued_async(self, conn: Any) -> None:
        if conn is None:
            self.drained += await drain_async(self.app, concurrency=self.concurrency)
            return
        raw = await async_connection(conn)
        if raw.info.transaction_status == pq.TransactionStatus.IDLE:
            self.drained += await drain_async(self.app, concurrency=self.concurrency)
        elif id(raw) not in self._hooked:
            await self.app.astore.run(listen(self.channel), raw)
            self._hook(raw)

    def _hook(self, raw: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> None:
        def handler(notify: psycopg.Notify) -> None:
            # Our own session's NOTIFY: a transaction of this connection that
            # enqueued has just committed (others' arrive only between them).
            if notify.channel == self.channel and notify.pid == raw.info.backend_pid:
                self._run()

        raw.add_notify_handler(handler)
        self._hooked[id(raw)] = (raw, handler)

    def _run(self) -> None:
        # The caller may have a running event loop (an async test, psycopg's
        # notify handler inside it): drain runs its workers in a thread then.
        ran = drain(self.app, concurrency=self.concurrency)
        with self._lock:
            self.drained += ran
