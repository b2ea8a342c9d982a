"""Fault injection: real worker processes, real Postgres, real faults; no job is lost.

Each test breaks one thing for real — SIGKILL of a worker, a handler that
kills its own process, ``pg_terminate_backend`` of a worker's sessions, a
stopped database — and then counts jobs in and jobs out: every job enqueued
is either done (its side effect is in ``effects``) or visibly dead in
``dead_jobs`` with its history, and nothing else.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path

import pytest

from jobqueue import DatabaseError, JobQueue
from tests.acceptance import support
from tests.faults import (
    Db,
    postgres_stopped,
    postgres_stopped_async,
    terminate,
    wait_registered,
    worker_sessions,
)
from tests.helpers import wait_until

FAULTY = "tests.apps.faulty:app"


def effects(db: Db) -> list[tuple[int, int, int]]:
    """``(job_id, attempt, pid)`` of every recorded success, in order."""
    return [(int(j), int(a), int(p)) for j, a, p in db.rows(
        "SELECT job_id, attempt, pid FROM {schema}.effects ORDER BY job_id, attempt")]


def jobs_left(db: Db) -> int:
    return int(db.value("SELECT count(*) FROM {schema}.jobs"))


def running_by(db: Db, worker_id: str) -> int:
    return int(db.value("SELECT count(*) FROM {schema}.jobs "
                        "WHERE state = 'running' AND locked_by = %s", (worker_id,)))


def times_listening(worker: support.WorkerProcess) -> int:
    """How often the worker's LISTEN session came up: first connect plus recoveries."""
    return len(worker.events("listener.connected")) + len(worker.events("listener.recovered"))


def listening_again(worker: support.WorkerProcess) -> bool:
    """Its LISTEN session is up after every time it went down."""
    return times_listening(worker) == len(worker.events("listener.degraded")) + 1


def test_sigkill_with_jobs_in_flight_another_worker_takes_them_over(
        app: JobQueue, db: Db, workers: support.Workers, tmp_path: Path) -> None:
    gate = tmp_path / "gate"  # the handlers block until it exists
    a = workers.start("--concurrency", "10", app=FAULTY)
    a_id = wait_registered(db, a.popen, a.log)
    ids = app.enqueue_many([("gated", {"gate": str(gate)})] * 10, strict=False)
    wait_until(lambda: running_by(db, a_id) == 10, 30, message="worker A to run all 10 jobs")

    b = workers.start("--concurrency", "10", app=FAULTY)
    b_id = wait_registered(db, b.popen, b.log)
    assert running_by(db, b_id) == 0  # A holds everything: B has nothing to claim

    killed_at = time.monotonic()
    a.kill()  # SIGKILL: no shutdown code runs, no job is released
    assert a.popen.returncode == -9
    wait_until(lambda: running_by(db, b_id) == 10, 30,
               message="worker B to take over the 10 jobs of the killed worker")
    recovery = time.monotonic() - killed_at
    print(f"\nrecovery after SIGKILL: {recovery:.1f}s (10 jobs)")
    assert recovery < 30.0  # the lease; the session check should make it far shorter

    # While B still runs them (the gate is closed): each job has counted the
    # attempt that died with A, and says so in its history.
    rows = db.rows("SELECT id, attempts, errors FROM {schema}.jobs ORDER BY id")
    assert [r[0] for r in rows] == ids
    for job_id, attempts, errors in rows:
        assert attempts == 2, (job_id, attempts)
        assert [(e["type"], e["attempt"], e["worker"]) for e in errors] == \
            [("WorkerLost", 1, a_id)], (job_id, errors)
    assert int(db.value("SELECT count(*) FROM {schema}.workers WHERE id = %s", (a_id,))) == 0

    gate.touch()
    wait_until(lambda: jobs_left(db) == 0, 30, message="B to finish the rescued jobs")
    assert effects(db) == [(job_id, 2, b.pid) for job_id in ids]  # each ran to the end once
    assert int(db.value("SELECT count(*) FROM {schema}.dead_jobs")) == 0
    assert b.stop() == 0


def test_database_outage_is_not_taken_for_crashed_workers(
        app: JobQueue, pg_dsn: str, db: Db, workers: support.Workers, tmp_path: Path) -> None:
    # While the server is down every heartbeat fails and every LISTEN session
    # is gone: exactly what a dead worker looks like. Once it is back, the
    # first maintenance round must not reap the live workers and re-run (and
    # count as crashed) every job they are in the middle of.
    gate = tmp_path / "gate"
    a = workers.start("--concurrency", "5", app=FAULTY)
    b = workers.start("--concurrency", "5", app=FAULTY)
    holders = {wait_registered(db, a.popen, a.log), wait_registered(db, b.popen, b.log)}
    ids = app.enqueue_many([("gated", {"gate": str(gate)})] * 10, strict=False)
    wait_until(lambda: sum(running_by(db, w) for w in holders) == 10, 30,
               message="the two workers to run all 10 jobs")
    owners = dict(db.rows("SELECT id, locked_by FROM {schema}.jobs"))

    with postgres_stopped(pg_dsn):
        # Down long enough that both workers have missed heartbeats: their
        # rows look stale to whichever maintenance round comes first.
        wait_until(lambda: all(len(w.events("heartbeat.failed")) >= 2 for w in (a, b)), 60,
                   message="both workers to miss two heartbeats")

    # Back: both workers listen again and have heartbeated on the new server.
    wait_until(lambda: all(w.events("listener.degraded") and listening_again(w)
                           for w in (a, b))
               and db.try_value("SELECT count(*) FROM {schema}.workers "
                                "WHERE heartbeat_at > pg_postmaster_start_time()") == 2,
               30, message="both workers to listen and heartbeat again")
    assert db.rows("SELECT id FROM {schema}.workers ORDER BY id") == \
        [(w,) for w in sorted(holders)]  # never reaped, so never re-registered
    assert not a.events("worker.reregistered") and not b.events("worker.reregistered")
    rows = db.rows("SELECT id, state, locked_by, attempts, errors FROM {schema}.jobs")
    assert sorted(rows) == [(i, "running", owners[i], 1, []) for i in ids]

    gate.touch()
    wait_until(lambda: jobs_left(db) == 0, 30, message="the jobs to finish")
    assert [(j, attempt) for j, attempt, _ in effects(db)] == [(i, 1) for i in ids]
    assert int(db.value("SELECT count(*) FROM {schema}.dead_jobs")) == 0
    assert a.stop() == 0 and b.stop() == 0


def test_poison_job_that_kills_its_worker_ends_dead_as_crashed(
        app: JobQueue, db: Db, workers: support.Workers) -> None:
    poison = app.enqueue("poison", strict=False, max_attempts=3)
    others = app.enqueue_many([("steady", {"work": 0.05})] * 20, strict=False, max_attempts=10)
    args = ("--concurrency", "2", "--poll-interval", "0.2")
    current = [workers.start(*args, app=FAULTY)]
    exits: list[int] = []

    def supervise() -> bool:
        # What systemd's Restart=always does: a worker that died is started again.
        if current[-1].popen.poll() is not None:
            exits.append(current[-1].popen.returncode)
            assert len(exits) <= 3, f"the poison job crashed a worker {len(exits)} times"
            current.append(workers.start(*args, app=FAULTY))
        return jobs_left(db) == 0

    started = time.monotonic()
    wait_until(supervise, 90, interval=0.05, message="the queue to drain despite the poison job")
    print(f"\npoison job: {len(exits)} crashes, queue drained in "
          f"{time.monotonic() - started:.1f}s")
    assert current[-1].stop() == 0
    assert exits == [1, 1, 1]  # os._exit(1), once per attempt

    dead = db.rows("SELECT id, reason, attempts, errors FROM {schema}.dead_jobs")
    assert len(dead) == 1
    job_id, reason, attempts, errors = dead[0]
    assert (job_id, reason, attempts) == (poison, "crashed", 3)
    assert [(e["type"], e["attempt"]) for e in errors] == \
        [("WorkerLost", 1), ("WorkerLost", 2), ("WorkerLost", 3)]
    assert len({e["worker"] for e in errors}) == 3  # a different worker each time

    # Every other job completed, whatever the crashes did to it on the way.
    done = {job_id for job_id, _, _ in effects(db)}
    assert done == set(others)


def test_worker_keeps_going_when_its_sessions_are_terminated(
        app: JobQueue, db: Db, workers: support.Workers) -> None:
    w = workers.start("--concurrency", "4", "--poll-interval", "0.5", app=FAULTY)
    w_id = wait_registered(db, w.popen, w.log)
    enqueued: list[int] = []

    def listener_pid() -> int | None:
        # The worker's LISTEN session, as its registry row records it, while alive.
        rows = db.rows("SELECT w.backend_pid FROM {schema}.workers AS w "
                       "JOIN pg_stat_activity AS a ON a.pid = w.backend_pid "
                       "WHERE w.id = %s", (w_id,))
        return int(rows[0][0]) if rows else None

    def jobs_flowing() -> list[int]:
        # A fresh batch, cut in the middle of its run: the worker is busy with
        # claims, handlers and acks when its sessions go.
        batch = app.enqueue_many([("steady", {"work": 0.03})] * 100, strict=False)
        enqueued.extend(batch)
        wait_until(lambda: int(db.value("SELECT count(*) FROM {schema}.effects "
                                         "WHERE job_id = ANY(%s)", (batch,))) >= 20,
                   30, message="the batch to be under way")
        return batch

    # 1. The LISTEN session alone.
    jobs_flowing()
    first_listener = listener_pid()
    assert first_listener in worker_sessions(db, w.pid)
    assert terminate(db, [first_listener]) == 1
    second_listener = wait_until(lambda: (p := listener_pid()) != first_listener and p, 30,
                                 message="the listener to reconnect")

    # 2. Every pooled session (claims, acks, heartbeats, maintenance).
    jobs_flowing()
    pooled = [p for p in worker_sessions(db, w.pid) if p != second_listener]
    assert pooled, "the worker should hold pooled sessions while it works"
    assert terminate(db, pooled) == len(pooled)

    # 3. Everything at once.
    jobs_flowing()
    every = worker_sessions(db, w.pid)
    assert second_listener in every and len(every) >= 2
    assert terminate(db, every) == len(every)
    wait_until(lambda: listener_pid() not in (None, first_listener, second_listener),
               30, message="the listener to reconnect again")

    wait_until(lambda: jobs_left(db) == 0, 60, message="every job to finish")
    assert w.popen.poll() is None, f"the worker died:\n{w.log()}"
    # Exactly once: no job lost, none run twice, none dead.
    ran = Counter(job_id for job_id, _, _ in effects(db))
    assert sorted(ran) == sorted(enqueued)
    assert set(ran.values()) == {1}
    assert int(db.value("SELECT count(*) FROM {schema}.dead_jobs")) == 0

    # It noticed and said so: the listener fell back to polling twice and came
    # back each time; the services whose sessions were cut logged their retry,
    # or the pool found the session closed before lending it, and said so.
    assert len(w.events("listener.degraded")) >= 2
    assert listening_again(w)
    retried = {e["event"] for e in (w.events("fetcher.claim_failed")
                                    + w.events("completer.flush_failed")
                                    + w.events("heartbeat.failed")
                                    + w.events("maintenance.failed")
                                    + w.events("db.connection_closed_while_idle"))}
    assert retried, f"no service reported a lost session:\n{w.log()}"
    print(f"\nsessions cut: listener x2, pooled {len(pooled)} + {len(every) - 1}; "
          f"services that retried: {sorted(retried)}")
    assert w.stop() == 0


# Long enough for a connection pool that backs off between reconnection
# attempts (1 s, 2 s, 4 s ...) to be waiting seconds for its next try.
OUTAGE = 8.0


def test_enqueue_while_the_database_is_down_raises_then_recovers(
        pg_dsn: str, migrated: str, db: Db, env: dict[str, str]) -> None:
    # Producers that keep trying through an outage: each enqueue fails with a
    # one-line DatabaseError within its connect timeout — never a hang, never
    # a silent drop — and the same producer works again as soon as the
    # server is back. Sync and async pools live through the same outage.
    warm = JobQueue(pg_dsn, schema=migrated, connect_timeout=1)
    cold = JobQueue(pg_dsn, schema=migrated, connect_timeout=1)  # never connected before

    async def scenario() -> list[int]:
        try:
            return await through_an_outage()
        finally:
            await warm.aclose()
            cold.close()

    async def fails(call: Awaitable[object]) -> str:
        started = time.monotonic()
        with pytest.raises(DatabaseError, match=r"^database unavailable: ") as err:
            await call
        assert time.monotonic() - started < 10.0, err.value
        # It says why (refused, no socket), not only that a pool timed out.
        assert "couldn't get a connection" not in str(err.value), err.value
        return str(err.value)

    async def through_an_outage() -> list[int]:
        ids = [warm.enqueue("steady", strict=False),  # the pools now hold live connections
               await warm.enqueue_async("steady", strict=False)]
        async with postgres_stopped_async(pg_dsn):
            blocking: list[Callable[[], object]] = [
                partial(warm.enqueue, "steady", strict=False),
                partial(warm.enqueue_many, [("steady", None)] * 3, strict=False),
                partial(cold.enqueue, "steady", strict=False),
                partial(cold.enqueue_many, [("steady", None)] * 3, strict=False)]
            down_since = time.monotonic()
            while time.monotonic() - down_since < OUTAGE:
                # All at once, the sync ones in threads: the event loop (and the
                # async pool's own reconnection attempts) runs on meanwhile.
                errors = await asyncio.gather(
                    *(fails(asyncio.to_thread(call)) for call in blocking),
                    *(fails(warm.enqueue_async("steady", strict=False)) for _ in range(4)))
            print(f"\nenqueue while down: {errors[0]}")
            cli = await asyncio.to_thread(
                subprocess.run, [*support.JOBQUEUE, "enqueue", "steady"], cwd=support.REPO,
                env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60,
                check=False)
            support.assert_one_error_line(cli, "database unavailable")
        # Back: the first try of each producer succeeds.
        ids.append(warm.enqueue("steady", strict=False))
        ids.append(await warm.enqueue_async("steady", strict=False))
        ids.append(cold.enqueue("steady", strict=False))
        return ids

    ids = asyncio.run(scenario())
    # Exactly the enqueues that returned an id exist: a failed one left nothing.
    assert [r[0] for r in db.rows("SELECT id FROM {schema}.jobs ORDER BY id")] == sorted(ids)


# -- claim-ahead: the buffer of claimed, unstarted jobs -------------------------------------


def test_sigkill_with_a_full_buffer_loses_nothing(
        app: JobQueue, db: Db, workers: support.Workers, tmp_path: Path) -> None:
    # Two jobs run, eight wait in the worker's buffer: all ten are leased to it.
    gate = tmp_path / "gate"
    flags = ("--concurrency", "2", "--prefetch", "8")
    a = workers.start(*flags, app=FAULTY)
    a_id = wait_registered(db, a.popen, a.log)
    ids = app.enqueue_many([("gated", {"gate": str(gate)})] * 10, strict=False)
    wait_until(lambda: running_by(db, a_id) == 10, 30, message="A to hold all ten jobs")

    b = workers.start(*flags, app=FAULTY)
    b_id = wait_registered(db, b.popen, b.log)
    a.kill()
    # Unstarted or not, every job A held is rescued, and B takes all of them.
    wait_until(lambda: running_by(db, b_id) == 10, 40, message="B to take over all ten")
    gate.touch()
    wait_until(lambda: jobs_left(db) == 0, 30, message="B to finish them")
    assert effects(db) == [(job_id, 2, b.pid) for job_id in ids]  # each ran once, on B
    assert int(db.value("SELECT count(*) FROM {schema}.dead_jobs")) == 0
    assert b.stop() == 0


def test_sigterm_releases_the_buffer_without_counting_an_attempt(
        app: JobQueue, db: Db, workers: support.Workers, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    a = workers.start("--concurrency", "1", "--prefetch", "5", app=FAULTY)
    a_id = wait_registered(db, a.popen, a.log)
    ids = app.enqueue_many([("gated", {"gate": str(gate)})] * 12, strict=False)
    wait_until(lambda: running_by(db, a_id) == 6, 30, message="A to hold one running, five ready")
    a.signal()  # SIGTERM: the running job may finish, the buffered five go back
    a.wait_event("worker.stopping")
    gate.touch()
    assert a.wait() == 0
    stopped = a.events("worker.stopped")[-1]
    assert (stopped["succeeded"], stopped["released"]) == (1, 5)
    done = [job_id for job_id, _, _ in effects(db)]
    assert len(done) == 1
    # The eleven left are queued as if never claimed: no attempt counted, no owner.
    left = db.rows("SELECT id, state, attempts, locked_by FROM {schema}.jobs ORDER BY id")
    assert [r[0] for r in left] == [i for i in ids if i not in done]
    assert {(r[1], r[2], r[3]) for r in left} == {("queued", 0, None)}

    b = workers.start("--concurrency", "4", app=FAULTY)
    wait_until(lambda: jobs_left(db) == 0, 30, message="B to run the rest")
    assert sorted(job_id for job_id, _, _ in effects(db)) == ids  # each once, nothing lost
    assert b.stop() == 0
