"""The worker in-process, on the happy path: wake-up, execution, acks, burst, graceful stop.

Each test runs a real :class:`jobqueue.worker.Worker` in a thread against the
test's own schema and counts jobs in and out through the database.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from psycopg import sql as pgsql

from jobqueue import JobContext, JobQueue, Retry
from jobqueue.worker import Worker, WorkerConfig
from jobqueue.worker.fetcher import Fetcher
from tests.helpers import count, wait_until, worker_thread


class IdleSpy:
    """Tells the test when the fetcher is asleep on its (long) poll timer.

    It wraps the fetcher's ``sleep``: while ``sleeping`` is true, the fetcher
    waits on the timer and nothing but a wake-up (NOTIFY, a freed slot) can
    make it claim before the timer runs out.
    """

    def __init__(self, fetcher: Fetcher, at_least: float) -> None:
        self.fetcher = fetcher
        self.at_least = at_least
        self.sleeping = False
        self.entered = 0
        self._sleep = fetcher.sleep
        fetcher.sleep = self.sleep  # type: ignore[method-assign]

    async def sleep(self, seconds: float, *events: asyncio.Event) -> None:
        long = seconds >= self.at_least
        if long:
            self.entered += 1
            self.sleeping = True
        try:
            await self._sleep(seconds, *events)
        finally:
            if long:
                self.sleeping = False

    def idle(self) -> bool:
        state = self.fetcher.state
        return self.sleeping and not state.inflight and not state.wake.is_set()


def test_notify_starts_a_committed_job_well_under_a_second(
        app: JobQueue, conn: psycopg.Connection[Any], admin: psycopg.Connection[Any]) -> None:
    started: list[float] = []
    ran = threading.Event()

    @app.task()
    def ping(n: int) -> None:
        started.append(time.monotonic())
        ran.set()

    # A 30 s poll timer: a job that starts within a second was woken by NOTIFY.
    with worker_thread(app, poll_interval=30.0) as worker:
        fetcher = worker.services["fetcher"]
        assert isinstance(fetcher, Fetcher)
        wait_until(lambda: worker.services["listener"].healthy, 10, message="LISTEN")
        spy = IdleSpy(fetcher, at_least=10.0)
        # A first job makes the fetcher loop once, so that its next sleep goes
        # through the spy.
        app.enqueue("ping", {"n": -1})
        assert ran.wait(35)
        latencies = []
        for n in range(5):
            wait_until(lambda: count(admin, app.schema, "jobs") == 0 and spy.idle(), 10,
                       message="the fetcher to be idle on its poll timer")
            ran.clear()
            app.enqueue("ping", {"n": n}, conn=conn)
            committing = time.monotonic()
            conn.commit()
            assert ran.wait(35)
            latencies.append(started[-1] - committing)
        notifications = worker.services["listener"].notifications
    print(f"NOTIFY commit->handler start: {', '.join(f'{x * 1000:.1f}' for x in latencies)} ms")
    assert max(latencies) < 1.0, latencies
    assert notifications >= 5


def test_sync_handlers_run_in_threads_and_async_handlers_on_the_loop(
        app: JobQueue, admin: psycopg.Connection[Any]) -> None:
    seen: dict[str, tuple[int, str, bool]] = {}
    release = threading.Event()

    @app.task(priority=-1)
    def blocker() -> None:
        seen["sync"] = (threading.get_ident(), threading.current_thread().name, _has_loop())
        # Blocks its thread until the async job runs: were this handler on the
        # event loop, the async job could never run and this would time out.
        assert release.wait(15), "the async job never ran while a sync job was blocked"

    @app.task()
    async def releaser() -> None:
        seen["async"] = (threading.get_ident(), threading.current_thread().name, _has_loop())
        release.set()

    app.enqueue("blocker")
    app.enqueue("releaser")
    with worker_thread(app, concurrency=2):
        wait_until(lambda: count(admin, app.schema, "jobs") == 0, 20, message="both jobs")
    sync_ident, sync_thread, sync_loop = seen["sync"]
    async_ident, async_thread, async_loop = seen["async"]
    assert async_thread == "test-worker" and async_loop  # the worker's own thread and loop
    assert sync_ident != async_ident
    assert sync_thread.startswith("jobqueue") and not sync_loop


def _has_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


class InFlight:
    """Counts handlers running at once, under a lock, and keeps the maximum.

    It also samples how many jobs the worker holds: with sync handlers the
    thread pool alone would cap the handlers running at once, while a worker
    that claimed too many would hold their leases with nobody running them.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.now = 0
        self.peak = 0
        self.held_peak = 0
        self.worker: Worker | None = None
        self.done: list[int] = []

    def enter(self) -> None:
        with self.lock:
            self.now += 1
            self.peak = max(self.peak, self.now)
            if self.worker is not None:
                self.held_peak = max(self.held_peak, len(self.worker.state.inflight))

    def leave(self, n: int) -> None:
        with self.lock:
            self.now -= 1
            self.done.append(n)


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_concurrency_is_reached_and_never_exceeded(app: JobQueue, admin: psycopg.Connection[Any],
                                                   kind: str) -> None:
    gauge = InFlight()
    limit, total = 4, 16

    if kind == "sync":
        @app.task(name="slow")
        def slow_sync(n: int) -> None:
            gauge.enter()
            time.sleep(0.15)  # simulated work
            gauge.leave(n)
    else:
        @app.task(name="slow")
        async def slow_async(n: int) -> None:
            gauge.enter()
            await asyncio.sleep(0.15)  # simulated work
            gauge.leave(n)

    with worker_thread(app, concurrency=limit) as worker:
        gauge.worker = worker
        # Enqueued with the worker idle: all of them are ready at once.
        app.enqueue_many([("slow", {"n": n}) for n in range(total)])
        wait_until(lambda: count(admin, app.schema, "jobs") == 0, 30, message="all jobs acked")
    assert sorted(gauge.done) == list(range(total))
    assert gauge.peak == limit
    assert gauge.held_peak == limit


def test_batched_acks_delete_every_job_once(app: JobQueue, admin: psycopg.Connection[Any]) -> None:
    total = 600
    handled: list[int] = []
    lock = threading.Lock()

    @app.task()
    def noop(n: int) -> None:
        with lock:
            handled.append(n)

    flushes: list[int] = []
    with worker_thread(app, concurrency=50, batch_size=50) as worker:
        completer = worker.services["completer"]
        flush = completer.flush

        async def counting_flush() -> None:
            flushes.append(completer.pending)
            await flush()

        completer.flush = counting_flush
        ids = app.enqueue_many([("noop", {"n": n}) for n in range(total)])
        wait_until(lambda: count(admin, app.schema, "jobs") == 0, 30, message="all jobs acked")
    assert len(ids) == total
    assert sorted(handled) == list(range(total))  # each ran exactly once
    assert worker.stats["succeeded"] == total and worker.stats["claimed"] == total
    assert count(admin, app.schema, "dead_jobs") == 0
    # Outcomes were written in batches, not one statement per job.
    assert sum(flushes) == total
    assert len(flushes) < total / 2, flushes
    print(f"{total} acks in {len(flushes)} flushes, largest {max(flushes)}")


def run_in_thread(target: Callable[[], None]) -> tuple[threading.Thread, list[BaseException]]:
    errors: list[BaseException] = []

    def wrapper() -> None:
        try:
            target()
        except BaseException as exc:  # noqa: BLE001 - re-raised by the test
            errors.append(exc)

    thread = threading.Thread(target=wrapper, daemon=True)
    thread.start()
    return thread, errors


def test_burst_drains_the_queue_and_returns(app: JobQueue, admin: psycopg.Connection[Any]) -> None:
    handled: list[tuple[int, int]] = []

    @app.task(pass_context=True, retry=Retry(base=0, jitter=False))
    def work(ctx: JobContext, n: int) -> None:
        if n == 0 and ctx.attempt == 1:
            # A retry due at once: burst must wait for it to be written and
            # run it, not leave it behind.
            raise RuntimeError("first attempt fails")
        handled.append((n, ctx.attempt))

    total = 40
    app.enqueue_many([("work", {"n": n}) for n in range(total)])
    worker = app.worker(WorkerConfig(burst=True, handle_signals=False, concurrency=8))
    thread, errors = run_in_thread(worker.run)
    thread.join(30)
    assert not thread.is_alive(), "a burst worker did not return"
    assert not errors, errors
    assert sorted(handled) == [(0, 2)] + [(n, 1) for n in range(1, total)]
    assert count(admin, app.schema, "jobs") == 0
    assert count(admin, app.schema, "dead_jobs") == 0
    assert count(admin, app.schema, "workers") == 0  # it deregistered
    assert worker.stats["succeeded"] == total and worker.stats["retried"] == 1


def test_graceful_stop_lets_running_jobs_finish(app: JobQueue,
                                                admin: psycopg.Connection[Any]) -> None:
    started: set[int] = set()
    finished: set[int] = set()

    @app.task()
    async def work(n: int) -> None:
        started.add(n)
        await asyncio.sleep(1.0)  # simulated work, well within the grace
        finished.add(n)

    total = 6
    app.enqueue_many([("work", {"n": n}) for n in range(total)])
    # Without claim-ahead (prefetch 0) the worker holds only what runs; the
    # next test has the buffer.
    with worker_thread(app, concurrency=4, prefetch=0, shutdown_timeout=10.0) as worker:
        wait_until(lambda: len(started) == 4, 10, message="four jobs running")
        asked = time.monotonic()
        worker.request_stop()
    took = time.monotonic() - asked
    # Everything that started finished and was acked; nothing was released;
    # the worker stopped claiming, so the rest were never touched.
    assert started == finished
    assert worker.stats["succeeded"] == len(finished) and worker.released == 0
    left = total - len(finished)
    assert count(admin, app.schema, "jobs") == left
    assert count(admin, app.schema, "jobs",
                 "state = 'queued' AND attempts = 0 AND locked_by IS NULL") == left
    assert took < 10.0


def test_claim_ahead_holds_at_most_its_bound_and_releases_the_buffer_on_stop(
        app: JobQueue, admin: psycopg.Connection[Any]) -> None:
    gate = threading.Event()
    ran: list[int] = []

    @app.task()
    def work(n: int) -> None:
        gate.wait(30)
        ran.append(n)

    total, concurrency, prefetch = 30, 2, 5
    ids = app.enqueue_many([("work", {"n": n}) for n in range(total)])

    def held(worker: Worker) -> int:
        return count(admin, app.schema, "jobs", "state = 'running' AND locked_by = %s",
                     (worker.id,))

    with worker_thread(app, concurrency=concurrency, prefetch=prefetch,
                       shutdown_timeout=10.0) as worker:
        wait_until(lambda: held(worker) == concurrency + prefetch, 10,
                   message="the worker to hold its running jobs and its buffer")
        # Held, never more: two handlers running, five jobs waiting for a slot.
        peak = max(held(worker) for _ in range(20))
        assert peak == concurrency + prefetch
        assert len(worker.state.inflight) == concurrency
        assert len(worker.state.buffer) == prefetch
        # The buffered jobs' leases are the heartbeat's to extend, like running ones.
        assert sorted(worker.state.held_ids()) == sorted(
            r[0] for r in admin.execute(f'SELECT id FROM "{app.schema}".jobs WHERE locked_by '
                                        "= %s", (worker.id,)).fetchall())
        worker.request_stop()  # the two running finish once the gate opens ...
        wait_until(lambda: not worker.executor.starting, 10, message="the worker to stop")
        gate.set()
    # ... and the five buffered go back to the queue unstarted, no attempt counted.
    assert sorted(ran) == [0, 1]
    assert worker.released == prefetch and worker.stats["succeeded"] == concurrency
    left = total - concurrency
    assert count(admin, app.schema, "jobs",
                 "state = 'queued' AND attempts = 0 AND locked_by IS NULL") == left
    # Nothing lost, nothing run twice: a second worker drains the rest, once each.
    with worker_thread(app, concurrency=4):
        wait_until(lambda: count(admin, app.schema, "jobs") == 0, 30, message="the rest")
    assert sorted(ran) == list(range(total)) and len(ids) == total


def test_a_worker_whose_writes_fall_behind_stops_claiming_and_loses_nothing(
        app: JobQueue, admin: psycopg.Connection[Any], pg_dsn: str) -> None:
    ran: list[int] = []

    @app.task()
    async def quick(n: int) -> None:
        ran.append(n)

    total = 300
    app.enqueue_many([("quick", {"n": n}) for n in range(total)])
    # Every flush after the first also adds to job_counts: while another
    # session holds that table, the worker's writes wait, its claims do not.
    with psycopg.connect(pg_dsn) as blocker, worker_thread(
            app, concurrency=4, prefetch=0, flush_size=5) as worker:
        limit = worker.state.unacked_limit
        assert limit == 10  # max(2 x flush_size, concurrency + prefetch)
        blocker.execute(pgsql.SQL("LOCK TABLE {} IN EXCLUSIVE MODE").format(
            pgsql.Identifier(app.schema, "job_counts")))
        time.sleep(1.0)  # the worker runs into the bound, then waits
        stalled = len(ran)
        time.sleep(0.5)
        # Held back: no more than the bound of unwritten outcomes (plus what was
        # running when it was reached), and nothing more claimed meanwhile.
        assert len(worker.state.unacked) <= limit + 4
        assert len(ran) == stalled < total
        blocker.rollback()  # the writes land; the worker goes on
        wait_until(lambda: count(admin, app.schema, "jobs") == 0, 30, message="the rest")
    assert sorted(ran) == list(range(total))


def test_short_grace_releases_unfinished_jobs_without_counting_the_attempt(
        app: JobQueue, admin: psycopg.Connection[Any]) -> None:
    started: set[tuple[int, int]] = set()
    completed: list[tuple[int, int]] = []
    hang = True

    @app.task(pass_context=True, retry=Retry(base=0, jitter=False))
    async def work(ctx: JobContext, n: int) -> None:
        if n == 0 and ctx.attempt == 1:
            raise RuntimeError("job 0 fails once, so it is released on its second attempt")
        started.add((n, ctx.attempt))
        if hang:
            await asyncio.sleep(60)  # cancelled when the grace runs out
        completed.append((n, ctx.attempt))

    ids = app.enqueue_many([("work", {"n": n}) for n in range(3)])
    with worker_thread(app, concurrency=3, shutdown_timeout=0.3) as worker:
        wait_until(lambda: started == {(0, 2), (1, 1), (2, 1)}, 15, message="three jobs hanging")
    assert worker.released == 3
    assert completed == []
    rows = admin.execute(pgsql.SQL(
        "SELECT id, state, attempts, locked_by, locked_until, jsonb_array_length(errors) "
        "FROM {} ORDER BY id").format(pgsql.Identifier(app.schema, "jobs"))).fetchall()
    # Back in the queue, unleased, with the attempts they had before this
    # worker claimed them: job 0 keeps its one real failure.
    assert rows == [(ids[0], "queued", 1, None, None, 1),
                    (ids[1], "queued", 0, None, None, 0),
                    (ids[2], "queued", 0, None, None, 0)]

    hang = False
    with worker_thread(app, concurrency=3):
        wait_until(lambda: count(admin, app.schema, "jobs") == 0, 15, message="jobs to finish")
    assert sorted(completed) == [(0, 2), (1, 1), (2, 1)]
    assert count(admin, app.schema, "dead_jobs") == 0


def test_worker_only_claims_its_own_queues(app: JobQueue, admin: psycopg.Connection[Any]) -> None:
    ran: list[str] = []

    @app.task()
    def work(queue: str) -> None:
        ran.append(queue)

    for queue in ("a", "b", "c"):
        app.enqueue("work", {"queue": queue}, queue=queue)
    with worker_thread(app, queues=("a", "b")):
        wait_until(lambda: count(admin, app.schema, "jobs", "queue IN ('a', 'b')") == 0, 15,
                   message="jobs of a and b")
    assert sorted(ran) == ["a", "b"]
    assert count(admin, app.schema, "jobs", "queue = 'c' AND state = 'queued'") == 1
