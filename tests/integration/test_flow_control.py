"""Flow control with workers in threads: rate limits, lock keys, priorities, pause.

- A rate limit (N claims per fixed window) holds across two workers: each job's
  claim time is read back from its own row, exactly, and counted per window.
- Jobs whose lock key is held do not block the jobs queued behind them.
- Low-priority jobs still complete while a producer keeps the queue full of
  high-priority ones (every ``fair_every``-th claim takes the oldest jobs); with
  the guard off they starve, which shows the load in the test is real.
- A pause reaches a worker whose LISTEN connection is down within a second.
- The API refuses bad limits and bad lock keys before touching the database.
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from jobqueue import JobContext, JobQueue, JobQueueError, PayloadError
from jobqueue.worker import listener as listener_module
from jobqueue.worker import worker as worker_module
from tests.helpers import count, wait_until, worker_thread

Conn = psycopg.Connection[Any]
EPOCH = datetime(2000, 1, 1, tzinfo=timezone.utc)  # the origin the rate windows are binned on


def column(admin: Conn, schema: str, query: str, *params: Any) -> list[Any]:
    return [r[0] for r in admin.execute(sql.SQL(query).format(
        jobs=sql.Identifier(schema, "jobs")), params).fetchall()]


# -- rate limit -----------------------------------------------------------------------------


def test_rate_limit_holds_across_two_workers(app: JobQueue, pg_dsn: str, admin: Conn) -> None:
    rate, period, total, lease = 5, 0.5, 22, 120.0
    claimed_at: dict[int, datetime] = {}
    jobs = sql.Identifier(app.schema, "jobs")

    @app.task(queue="rl", pass_context=True)
    async def limited(ctx: JobContext) -> None:
        # The claim set locked_until = now() + lease, with now() the claim's own
        # transaction time: the very time its rate window was chosen by. (No
        # heartbeat moves it: the workers' first beat is after the test.)
        async with await psycopg.AsyncConnection.connect(pg_dsn) as conn:
            cur = await conn.execute(sql.SQL("SELECT locked_until FROM {} WHERE id = %s")
                                     .format(jobs), (ctx.id,))
            row = await cur.fetchone()
        assert row is not None
        claimed_at[ctx.id] = row[0] - timedelta(seconds=lease)

    app.queues.set_limits("rl", rate_limit=rate, rate_period=period)
    config: dict[str, Any] = {"queues": ("rl",), "concurrency": 10, "poll_interval": 0.05,
                              "lease": lease, "heartbeat_interval": 50.0}
    with worker_thread(app, **config) as first, worker_thread(app, **config) as second:
        app.enqueue_many([("limited", {})] * total)
        wait_until(lambda: len(claimed_at) == total, 30, message="every job to run")
        by_worker = (first.state.started, second.state.started)
    assert count(admin, app.schema, "jobs") == 0
    assert count(admin, app.schema, "dead_jobs") == 0

    windows = Counter(int((at - EPOCH).total_seconds() // period) for at in claimed_at.values())
    assert max(windows.values()) == rate, windows  # never more, and the limit was reached
    # 22 jobs at 5 per window need 5 windows; without the limit they would share one.
    assert len(windows) >= -(-total // rate)
    print(f"\nrate {rate}/{period}s: claims per window {sorted(windows.items())}, "
          f"jobs per worker {by_worker}")


# -- lock keys ------------------------------------------------------------------------------


def test_jobs_behind_a_held_lock_key_are_not_blocked(
        app: JobQueue, conn: Conn, admin: Conn, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    done: list[str] = []

    @app.task()
    async def step(name: str, gated: bool = False) -> None:
        while gated and not gate.exists():
            await asyncio.sleep(0.01)
        done.append(name)

    # One transaction, so the worker first sees the whole queue: four jobs of
    # one key at its head, two others behind them.
    same = [app.enqueue("step", {"name": f"k{i}", "gated": True}, conn=conn, lock="k")
            for i in range(4)]
    app.enqueue("step", {"name": "free"}, conn=conn)
    app.enqueue("step", {"name": "other"}, conn=conn, lock="other")
    conn.commit()
    assert column(admin, app.schema, "SELECT lock_key FROM {jobs} ORDER BY id") == \
        ["k", "k", "k", "k", None, "other"]

    with worker_thread(app, concurrency=2) as worker:
        # One slot holds k0 (it has the key); the other must reach past k1..k3.
        wait_until(lambda: sorted(done) == ["free", "other"], 10,
                   message="the jobs behind the held key to run")
        assert column(admin, app.schema, "SELECT id FROM {jobs} WHERE lock_key = 'k' "
                      "AND state = 'running'") == [same[0]]
        gate.touch()
        wait_until(lambda: len(done) == 6, 20, message="the key's jobs to run")
        assert worker.state.started == 6  # each once
    assert done[2:] == ["k0", "k1", "k2", "k3"]  # one at a time, in order
    assert count(admin, app.schema, "jobs") == 0
    assert count(admin, app.schema, "job_locks") == 0


def test_lock_is_stored_by_every_enqueue_path(app: JobQueue, pg_dsn: str, conn: Conn,
                                              admin: Conn) -> None:
    @app.task()
    def plain() -> None:
        """Only enqueued."""

    one = app.enqueue("plain", conn=conn, lock="a")
    many = app.enqueue_many([("plain", None)] * 2, conn=conn, lock="b")
    conn.commit()

    async def enqueue_async() -> list[int]:
        async with await psycopg.AsyncConnection.connect(pg_dsn) as aconn:
            ids = [await app.enqueue_async("plain", conn=aconn, lock="c")]
            ids += await app.enqueue_many_async([("plain", None)], conn=aconn, lock="d")
            await aconn.commit()
        return ids

    more = asyncio.run(enqueue_async())
    none = app.enqueue("plain")
    stored = dict(admin.execute(sql.SQL("SELECT id, lock_key FROM {}").format(
        sql.Identifier(app.schema, "jobs"))).fetchall())
    assert stored == {one: "a", many[0]: "b", many[1]: "b", more[0]: "c", more[1]: "d",
                      none: None}


@pytest.mark.parametrize("bad", ["", 42, "nul\x00byte"])
def test_bad_lock_is_refused_before_any_sql(app: JobQueue, conn: Conn, bad: Any) -> None:
    @app.task()
    def plain() -> None:
        """Only enqueued."""

    app.enqueue("plain", conn=conn)
    with pytest.raises(PayloadError, match="lock"):
        app.enqueue("plain", conn=conn, lock=bad)
    with pytest.raises(PayloadError, match="lock"):
        app.enqueue_many([("plain", None)], conn=conn, lock=bad)
    conn.execute("SELECT 1")  # the caller's transaction was not poisoned
    conn.commit()


# -- priorities without starvation --------------------------------------------------------


class Flood:
    """A producer thread that keeps at least ``floor`` priority-0 jobs ready."""

    def __init__(self, app: JobQueue, pg_dsn: str, floor: int = 400, batch: int = 300) -> None:
        self.app, self.dsn, self.floor, self.batch = app, pg_dsn, floor, batch
        self.enqueued: list[int] = []
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def ready(self, conn: Conn) -> int:
        return count(conn, self.app.schema, "jobs", "priority = 0 AND state = 'queued'")

    def _run(self) -> None:
        try:
            with psycopg.connect(self.dsn, autocommit=True) as conn:
                while not self._stop.wait(0.005):
                    if self.ready(conn) < self.floor:
                        self.enqueued += self.app.enqueue_many(
                            [("high", {})] * self.batch, priority=0)
        except BaseException as exc:  # noqa: BLE001 - re-raised by the test
            self.errors.append(exc)

    def __enter__(self) -> Flood:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(20)
        if self.errors:
            raise self.errors[0]


@pytest.fixture
def prio_app(app: JobQueue, pg_dsn: str) -> Iterator[tuple[JobQueue, list[int], dict[int, int]]]:
    """``high`` (priority 0) records its id; ``low`` (priority 10) records how many
    priority-0 jobs were ready while it ran."""
    high_done: list[int] = []
    low_saw: dict[int, int] = {}
    jobs = sql.Identifier(app.schema, "jobs")

    @app.task(priority=0, pass_context=True)
    async def high(ctx: JobContext) -> None:
        await asyncio.sleep(0.005)
        high_done.append(ctx.id)

    @app.task(priority=10, pass_context=True)
    async def low(ctx: JobContext) -> None:
        async with await psycopg.AsyncConnection.connect(pg_dsn) as conn:
            cur = await conn.execute(sql.SQL(
                "SELECT count(*) FROM {} WHERE priority = 0 AND state = 'queued'").format(jobs))
            row = await cur.fetchone()
        assert row is not None
        low_saw[ctx.id] = int(row[0])

    yield app, high_done, low_saw


def test_low_priority_jobs_complete_while_high_priority_jobs_keep_arriving(
        prio_app: tuple[JobQueue, list[int], dict[int, int]], pg_dsn: str,
        admin: Conn) -> None:
    app, high_done, low_saw = prio_app
    with worker_thread(app, concurrency=4, fair_every=10) as worker, \
            Flood(app, pg_dsn) as flood:
        wait_until(lambda: len(high_done) >= 200, 30, message="the flood to be running")
        lows = app.enqueue_many([("low", {})] * 5)
        wait_until(lambda: len(low_saw) == len(lows), 20,
                   message="the low-priority jobs to complete under the flood")
        # Each ran while higher-priority jobs were ready: only the fairness
        # claim could have picked it.
        assert all(ready > 0 for ready in low_saw.values()), low_saw
        assert sorted(low_saw) == sorted(lows)
        high_during = len(high_done)
    assert worker.crashed is None
    # Jobs in = jobs out: every high job ran or is still in the table, none twice.
    assert len(set(high_done)) == len(high_done)
    left = count(admin, app.schema, "jobs", "priority = 0")
    assert len(high_done) + left == len(flood.enqueued)
    assert count(admin, app.schema, "dead_jobs") == 0
    print(f"\nstarvation guard: {len(lows)} low-priority jobs done among {high_during} "
          f"high-priority ones; ready high jobs when each ran: {sorted(low_saw.values())}")


def test_without_the_guard_the_flood_starves_low_priority_jobs(
        prio_app: tuple[JobQueue, list[int], dict[int, int]], pg_dsn: str,
        admin: Conn) -> None:
    # The control for the test above: the same load with fair_every=0. If low
    # jobs ran here, the flood would not be keeping the queue full.
    app, high_done, low_saw = prio_app
    with worker_thread(app, concurrency=4, fair_every=0), Flood(app, pg_dsn):
        wait_until(lambda: len(high_done) >= 200, 30, message="the flood to be running")
        lows = app.enqueue_many([("low", {})] * 5)
        wait_until(lambda: sum(1 for job_id in high_done if job_id > max(lows)) >= 400, 30,
                   message="400 high-priority jobs enqueued after the low ones to run")
        assert low_saw == {}
    assert count(admin, app.schema, "jobs", "priority = 10 AND state = 'queued'") == len(lows)


# -- pause without NOTIFY -------------------------------------------------------------------


def deaf_dsn(dsn: str) -> str:
    return psycopg.conninfo.make_conninfo(dsn, host="127.0.0.1", port="1")


@pytest.fixture
def deaf(monkeypatch: pytest.MonkeyPatch) -> None:
    """Workers started in this test get a listener aimed at a port where no server
    listens: their LISTEN connection never comes up, while everything else works."""
    base = listener_module.Listener

    class Deaf(base):  # type: ignore[misc, valid-type]
        def __init__(self, store: Any, *args: Any, **kwargs: Any) -> None:
            super().__init__(store, *args, **{**kwargs, "listen_dsn": deaf_dsn(store.dsn)})

    monkeypatch.setattr(worker_module, "Listener", Deaf)


def db_now(admin: Conn) -> datetime:
    row = admin.execute("SELECT clock_timestamp()").fetchone()
    assert row is not None
    return row[0]  # type: ignore[no-any-return]


def test_pause_reaches_a_worker_without_listen_within_a_second(
        pg_dsn: str, migrated: str, admin: Conn, deaf: None) -> None:
    app = JobQueue(pg_dsn, schema=migrated, connect_timeout=1.0)
    ran: list[int] = []

    @app.task(pass_context=True)
    async def tick(ctx: JobContext) -> None:
        ran.append(ctx.id)

    try:
        with worker_thread(app, queues=("p", "r"), poll_interval=0.1) as worker:
            listener = worker.services["listener"]
            assert not listener.healthy  # type: ignore[attr-defined]
            first = app.enqueue("tick", queue="p")
            wait_until(lambda: ran == [first], 10, message="the queue to be served")

            app.queues.pause("p")  # its NOTIFY cannot reach this worker
            paused = db_now(admin)
            # Jobs that come due more than a second after the pause, while the
            # worker is awake and claiming for them; and one in another queue,
            # due after them all, to tell when they have all come due.
            held = [app.enqueue("tick", queue="p", run_at=paused + timedelta(seconds=s))
                    for s in (1.4, 1.7, 2.0)]
            marker = app.enqueue("tick", queue="r", run_at=paused + timedelta(seconds=2.5))
            wait_until(lambda: marker in ran, 15, message="the other queue's job to run")
            assert [job_id for job_id in ran if job_id in held] == []
            assert listener.notifications == 0  # type: ignore[attr-defined]

            app.queues.resume("p")
            wait_until(lambda: set(held) <= set(ran), 10, message="the held jobs after resume")
            assert sorted(ran) == sorted([first, *held, marker])  # each once
        assert count(admin, migrated, "jobs") == 0
    finally:
        app.close()


# -- the API's own checks -------------------------------------------------------------------


def test_limits_are_validated_and_listed(app: JobQueue) -> None:
    with pytest.raises(JobQueueError, match="max_running"):
        app.queues.set_limits("q", max_running=0)
    with pytest.raises(JobQueueError, match="together"):
        app.queues.set_limits("q", rate_limit=5)
    with pytest.raises(JobQueueError, match="rate_limit"):
        app.queues.set_limits("q", rate_limit=0, rate_period=1.0)
    app.queues.set_limits("q", max_running=3, rate_limit=10, rate_period=60.0)
    app.queues.pause("r")
    listed = {s.name: s.as_dict() for s in app.queues.settings()}
    assert listed == {
        "q": {"name": "q", "paused": False, "max_running": 3, "rate_limit": 10,
              "rate_period": 60.0, "max_ready": None, "reject_when_full": False},
        "r": {"name": "r", "paused": True, "max_running": None, "rate_limit": None,
              "rate_period": None, "max_ready": None, "reject_when_full": False}}
    app.queues.set_limits("q")  # clears both
    app.queues.resume("r")
    assert [(s.name, s.paused, s.limited) for s in app.queues.settings()] == \
        [("q", False, False), ("r", False, False)]
