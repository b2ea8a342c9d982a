"""The worker when things go wrong: failing handlers, timeouts, LISTEN loss, dead workers.

The invariant behind every test here: a committed job is always in exactly
one place (``jobs`` or ``dead_jobs``) and its ``errors`` tell the story of
each failed attempt. Faults are real: handlers really raise and overrun,
the listener's session is really terminated, a dead worker's jobs were
really claimed by the claim statement.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql as pgsql
from psycopg.rows import dict_row

from jobqueue import JobContext, JobQueue, PermanentError, Retry, RetryAfter, sql
from jobqueue.config import Settings
from jobqueue.db.jobs import ClaimRequest
from jobqueue.db.store import AsyncStore, PoolOptions
from jobqueue.log import get_logger
from jobqueue.worker.fetcher import Fetcher
from jobqueue.worker.maintenance import Maintenance
from tests.helpers import count, wait_until, worker_thread
from tests.integration.test_worker import IdleSpy


def row(admin: psycopg.Connection[Any], schema: str, table: str,
        job_id: int) -> dict[str, Any] | None:
    with admin.cursor(row_factory=dict_row) as cur:
        cur.execute(pgsql.SQL("SELECT * FROM {} WHERE id = %s").format(
            pgsql.Identifier(schema, table)), (job_id,))
        return cur.fetchone()


def dead(admin: psycopg.Connection[Any], schema: str, job_id: int) -> dict[str, Any]:
    """The job's dead_jobs row, checking that it is nowhere else."""
    assert row(admin, schema, "jobs", job_id) is None, "a dead job is still in jobs"
    found = row(admin, schema, "dead_jobs", job_id)
    assert found is not None, "the job is in neither jobs nor dead_jobs"
    return found


def is_dead(admin: psycopg.Connection[Any], schema: str, job_id: int) -> bool:
    return count(admin, schema, "dead_jobs", "id = %s", (job_id,)) == 1


def at(entry: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(entry["at"])


# -- failures and the retry policy ---------------------------------------------------------


def test_failed_attempt_is_recorded_and_rescheduled_after_the_backoff(
        app: JobQueue, admin: psycopg.Connection[Any]) -> None:
    @app.task(max_attempts=5, retry=Retry(base=2.0, jitter=False))
    def flaky() -> None:
        raise RuntimeError("the service is down")

    job_id = app.enqueue("flaky")
    with worker_thread(app) as worker:
        wait_until(lambda: count(admin, app.schema, "jobs",
                                 "jsonb_array_length(errors) = 1 AND state = 'queued'") == 1,
                   15, message="the first failure")
        found = row(admin, app.schema, "jobs", job_id)
    assert found is not None
    assert (found["attempts"], found["locked_by"], found["locked_until"]) == (1, None, None)
    [entry] = found["errors"]
    assert set(entry) == {"at", "attempt", "worker", "type", "message", "traceback"}
    assert (entry["attempt"], entry["worker"], entry["type"], entry["message"]) == (
        1, worker.id, "RuntimeError", "the service is down")
    assert "in flaky" in entry["traceback"]
    assert "RuntimeError: the service is down" in entry["traceback"]
    # The first retry waits base * 2 ** 0 = 2 s from the failure.
    wait = (found["run_at"] - at(entry)).total_seconds()
    assert 1.99 <= wait < 3.0, wait


def test_job_out_of_attempts_is_dead_with_its_full_history(
        app: JobQueue, admin: psycopg.Connection[Any]) -> None:
    @app.task(max_attempts=3, retry=Retry(base=0.1, jitter=False), pass_context=True)
    def always_fails(ctx: JobContext, order: int) -> None:
        raise RuntimeError(f"boom {ctx.attempt}")

    job_id = app.enqueue("always_fails", {"order": 7})
    with worker_thread(app) as worker:
        wait_until(lambda: is_dead(admin, app.schema, job_id), 15, message="the job to die")
    found = dead(admin, app.schema, job_id)
    assert (found["reason"], found["attempts"], found["max_attempts"]) == ("exhausted", 3, 3)
    assert (found["task"], found["queue"], found["args"]) == ("always_fails", "default",
                                                              {"order": 7})
    errors = found["errors"]
    assert [e["attempt"] for e in errors] == [1, 2, 3]
    assert [e["message"] for e in errors] == ["boom 1", "boom 2", "boom 3"]
    assert {e["type"] for e in errors} == {"RuntimeError"}
    assert {e["worker"] for e in errors} == {worker.id}
    assert all("RuntimeError: boom" in e["traceback"] for e in errors)
    # Each retry waited at least its backoff: 0.1 s, then 0.2 s.
    gaps = [(at(b) - at(a)).total_seconds() for a, b in itertools.pairwise(errors)]
    assert gaps[0] >= 0.099 and gaps[1] >= 0.199, gaps


def test_errors_that_must_not_be_retried_are_dead_at_once(
        app: JobQueue, admin: psycopg.Connection[Any]) -> None:
    @app.task(max_attempts=5)
    def refuses() -> None:
        raise PermanentError("card declined")

    @app.task(max_attempts=5, retry=Retry(dead_on=(ValueError,)))
    def bad_input() -> None:
        raise ValueError("not a number")

    @app.task(max_attempts=5, retry=Retry(retry_on=(ConnectionError,), base=60))
    def network_only(kind: str) -> None:
        if kind == "network":
            raise ConnectionError("reset by peer")  # listed: retried
        raise KeyError("missing")  # not listed: dead at once

    ids = {
        "refuses": app.enqueue("refuses"),
        "bad_input": app.enqueue("bad_input"),
        "unlisted": app.enqueue("network_only", {"kind": "other"}),
        "listed": app.enqueue("network_only", {"kind": "network"}),
    }
    with worker_thread(app):
        wait_until(lambda: count(admin, app.schema, "dead_jobs") == 3
                   and count(admin, app.schema, "jobs", "jsonb_array_length(errors) = 1") == 1,
                   15, message="three dead jobs and one retry")
    expected_types = {"refuses": "jobqueue.errors.PermanentError", "bad_input": "ValueError",
                      "unlisted": "KeyError"}
    for name, type_name in expected_types.items():
        found = dead(admin, app.schema, ids[name])
        assert (found["reason"], found["attempts"]) == ("permanent", 1), name
        assert [e["type"] for e in found["errors"]] == [type_name], name
    retried = row(admin, app.schema, "jobs", ids["listed"])
    assert retried is not None
    assert (retried["state"], retried["attempts"]) == ("queued", 1)
    assert [e["type"] for e in retried["errors"]] == ["ConnectionError"]


def test_retry_after_sets_when_the_job_runs_next(app: JobQueue,
                                                 admin: psycopg.Connection[Any]) -> None:
    failed_at: list[float] = []
    succeeded_at: list[float] = []

    # The backoff alone would wait 100 s: only RetryAfter can make it 1.5 s.
    @app.task(pass_context=True, retry=Retry(base=100, jitter=False))
    def rate_limited(ctx: JobContext) -> None:
        if ctx.attempt == 1:
            failed_at.append(time.monotonic())
            raise RetryAfter(1.5)
        succeeded_at.append(time.monotonic())

    job_id = app.enqueue("rate_limited")
    with worker_thread(app):
        wait_until(lambda: count(admin, app.schema, "jobs",
                                 "jsonb_array_length(errors) = 1 AND state = 'queued'") == 1,
                   15, message="the first attempt")
        found = row(admin, app.schema, "jobs", job_id)
        wait_until(lambda: count(admin, app.schema, "jobs") == 0, 15, message="the second run")
    assert found is not None
    wait = (found["run_at"] - at(found["errors"][0])).total_seconds()
    assert 1.49 <= wait < 2.5, wait
    assert len(succeeded_at) == 1
    assert succeeded_at[0] - failed_at[0] >= 1.5
    assert count(admin, app.schema, "dead_jobs") == 0


def test_unknown_task_is_dead_and_the_worker_keeps_working(
        app: JobQueue, admin: psycopg.Connection[Any]) -> None:
    ran: list[int] = []

    @app.task()
    def known(n: int) -> None:
        ran.append(n)

    stranger = app.enqueue("not_in_this_worker", {"x": 1}, strict=False)
    app.enqueue_many([("known", {"n": n}) for n in range(3)])
    with worker_thread(app) as worker:
        wait_until(lambda: is_dead(admin, app.schema, stranger) and len(ran) == 3, 15,
                   message="the unknown job to die and the others to run")
        app.enqueue("known", {"n": 3})  # still working afterwards
        wait_until(lambda: count(admin, app.schema, "jobs") == 0, 15, message="a later job")
    assert sorted(ran) == [0, 1, 2, 3]
    found = dead(admin, app.schema, stranger)
    assert (found["reason"], found["attempts"]) == ("unknown_task", 1)
    [entry] = found["errors"]
    assert entry["type"] == "UnknownTask" and "not_in_this_worker" in entry["message"]
    assert worker.crashed is None


# -- timeouts ------------------------------------------------------------------------------


def test_async_timeout_fails_the_attempt_and_dies_as_timeout(
        app: JobQueue, admin: psycopg.Connection[Any]) -> None:
    cancelled: list[int] = []

    @app.task(timeout=0.2, max_attempts=2, retry=Retry(base=0.05, jitter=False),
              pass_context=True)
    async def sleepy(ctx: JobContext) -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.append(ctx.attempt)  # the handler really was stopped
            raise

    job_id = app.enqueue("sleepy")
    with worker_thread(app):
        wait_until(lambda: is_dead(admin, app.schema, job_id), 15, message="the job to die")
    found = dead(admin, app.schema, job_id)
    assert (found["reason"], found["attempts"]) == ("timeout", 2)
    assert [e["attempt"] for e in found["errors"]] == [1, 2]
    for entry in found["errors"]:
        assert "TimeoutError" in entry["type"], entry["type"]
        assert "timed out after 0.2s" in entry["message"]
    assert cancelled == [1, 2]


def test_sync_timeout_kills_the_handler_so_it_never_runs_twice_at_once(
        app: JobQueue, admin: psycopg.Connection[Any], pg_dsn: str, tmp_path: Path) -> None:
    journal = tmp_path / "journal"

    @app.task(timeout=0.5, max_attempts=2, retry=Retry(base=0.05, jitter=False),
              pass_context=True)
    def overruns(ctx: JobContext) -> None:
        # This runs in a child process: it reports through a file.
        previous = [int(line.split()[2]) for line in _lines(journal)
                    if line.startswith("start")]
        alive = [pid for pid in previous if _alive(pid)]
        with psycopg.connect(pg_dsn) as conn:
            state = conn.execute(pgsql.SQL("SELECT state, locked_by FROM {} WHERE id = %s")
                                 .format(pgsql.Identifier(app.schema, "jobs")),
                                 (ctx.id,)).fetchone()
        leased = state == ("running", ctx.worker_id)
        _append(journal, f"start {ctx.attempt} {os.getpid()} alive={alive} leased={leased}")
        time.sleep(30)  # far past the timeout: killed before this returns
        _append(journal, f"end {ctx.attempt}")

    job_id = app.enqueue("overruns")
    with worker_thread(app):
        wait_until(lambda: is_dead(admin, app.schema, job_id), 20, message="the job to die")
    found = dead(admin, app.schema, job_id)
    assert (found["reason"], found["attempts"]) == ("timeout", 2)
    assert all("TimeoutError" in e["type"] for e in found["errors"])
    lines = _lines(journal)
    starts = [line.split() for line in lines if line.startswith("start")]
    assert [s[1] for s in starts] == ["1", "2"]
    assert not [line for line in lines if line.startswith("end")], "a killed handler went on"
    # The second attempt began after the first one's process was gone, and
    # each ran while its worker held the job's lease.
    assert [s[3] for s in starts] == ["alive=[]", "alive=[]"]
    assert [s[4] for s in starts] == ["leased=True", "leased=True"]
    assert all(int(s[2]) != os.getpid() and not _alive(int(s[2])) for s in starts)


def test_sync_timeout_without_fork_keeps_the_lease_until_the_thread_returns(
        app: JobQueue, admin: psycopg.Connection[Any], pg_dsn: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Where fork is unavailable the handler runs in a thread, which cannot be
    # killed: the job must stay leased (and out of other workers' reach) until
    # the thread returns, however long past its timeout that is.
    monkeypatch.setattr("jobqueue.worker.executor.fork_available", lambda: False)
    lock = threading.Lock()
    running: set[int] = set()
    overlaps: list[int] = []
    observed: list[tuple[int, bool, bool]] = []

    @app.task(timeout=0.2, max_attempts=2, retry=Retry(base=0.05, jitter=False),
              pass_context=True)
    def overruns(ctx: JobContext) -> None:
        with lock:
            if ctx.id in running:
                overlaps.append(ctx.attempt)
            running.add(ctx.id)
        try:
            # The worker tells the handler (ctx.cancelled) that its timeout passed...
            with contextlib.suppress(AssertionError):
                wait_until(lambda: ctx.cancelled, 10, interval=0.01)
            told = ctx.cancelled
            time.sleep(1.6)  # ...and we overrun past the 1.2 s lease anyway
            with psycopg.connect(pg_dsn) as conn:
                state = conn.execute(pgsql.SQL("SELECT state, locked_by FROM {} WHERE id = %s")
                                     .format(pgsql.Identifier(app.schema, "jobs")),
                                     (ctx.id,)).fetchone()
            observed.append((ctx.attempt, told, state == ("running", ctx.worker_id)))
        finally:
            with lock:
                running.discard(ctx.id)

    job_id = app.enqueue("overruns")
    fast = {"lease": 1.2, "heartbeat_interval": 0.15, "maintenance_interval": 0.2}
    # A second worker, eager to rescue expired leases, stands by to take the
    # job the moment it looks abandoned.
    with worker_thread(app, **fast), worker_thread(app, **fast):
        wait_until(lambda: is_dead(admin, app.schema, job_id), 20, message="the job to die")
    found = dead(admin, app.schema, job_id)
    assert (found["reason"], found["attempts"]) == ("timeout", 2)
    # Two timeouts, each recorded once the thread had returned; no rescue in between.
    assert all("TimeoutError" in e["type"] for e in found["errors"])
    assert all("handler returned after" in e["message"] for e in found["errors"])
    assert overlaps == []
    assert observed == [(1, True, True), (2, True, True)]


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def _append(path: Path, line: str) -> None:
    with path.open("a") as f:
        f.write(line + "\n")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


# -- LISTEN lost ---------------------------------------------------------------------------


def listener_pid(admin: psycopg.Connection[Any], schema: str, worker_id: str) -> int | None:
    found = admin.execute(pgsql.SQL("SELECT backend_pid FROM {} WHERE id = %s").format(
        pgsql.Identifier(schema, "workers")), (worker_id,)).fetchone()
    return None if found is None else found[0]


def session_exists(admin: psycopg.Connection[Any], pid: int) -> bool:
    return count_sessions(admin, pid) == 1


def count_sessions(admin: psycopg.Connection[Any], pid: int) -> int:
    found = admin.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s",
                          (pid,)).fetchone()
    assert found is not None
    return int(found[0])


def test_jobs_run_by_polling_while_listen_is_down_and_listen_comes_back(
        app: JobQueue, admin: psycopg.Connection[Any]) -> None:
    ran: list[float] = []
    event = threading.Event()

    @app.task()
    def ping() -> None:
        ran.append(time.monotonic())
        event.set()

    # Maintenance is kept out of the way: the test is about the listener.
    with worker_thread(app, poll_interval=0.4, maintenance_interval=60) as worker:
        listener, fetcher = worker.services["listener"], worker.services["fetcher"]
        assert isinstance(fetcher, Fetcher)
        first = wait_until(lambda: listener_pid(admin, app.schema, worker.id), 10,
                           message="the listener's session")
        assert session_exists(admin, first)

        # Cut the listener's session, and keep it from coming back for a while
        # by pointing it at a port where nothing listens.
        real_dsn = listener.listen_dsn
        listener.listen_dsn = "postgresql://postgres@127.0.0.1:1/nowhere?connect_timeout=1"
        terminated = admin.execute("SELECT pg_terminate_backend(%s)", (first,)).fetchone()
        assert terminated == (True,)
        wait_until(lambda: not listener.healthy and fetcher.fast_poll, 10,
                   message="the listener to report itself down")

        # Jobs still run: nobody hears their NOTIFY, the poll finds them.
        app.enqueue_many([("ping", None)] * 5)
        wait_until(lambda: count(admin, app.schema, "jobs") == 0, 15, message="polled jobs")
        assert len(ran) == 5
        assert not listener.healthy  # it really was polling
        assert listener_pid(admin, app.schema, worker.id) == first

        # The database is reachable again: the same worker, not restarted,
        # listens on a new session and records it.
        listener.listen_dsn = real_dsn
        second = wait_until(lambda: listener.healthy
                            and (listener_pid(admin, app.schema, worker.id) or first) != first
                            and listener_pid(admin, app.schema, worker.id), 20,
                            message="the listener to reconnect")
        assert session_exists(admin, second) and not session_exists(admin, first)
        assert not fetcher.fast_poll

        # ...and NOTIFY wakes it again: with a 30 s poll timer, a job starts at once.
        fetcher.poll_interval = 30.0
        spy = IdleSpy(fetcher, at_least=10.0)
        app.enqueue("ping")  # makes the fetcher loop once, onto the spy
        wait_until(lambda: len(ran) == 6, 35, message="a job after reconnecting")
        wait_until(lambda: count(admin, app.schema, "jobs") == 0 and spy.idle(), 10,
                   message="the fetcher to be idle")
        event.clear()
        before = time.monotonic()
        app.enqueue("ping")
        assert event.wait(35)
        latency = ran[-1] - before
    assert latency < 1.0, latency
    assert worker.crashed is None
    print(f"after reconnect: enqueue->start {latency * 1000:.1f} ms")


# -- dead workers --------------------------------------------------------------------------


def add_worker(admin: psycopg.Connection[Any], schema: str, worker_id: str, *,
               heartbeat_age: float, session: tuple[int, datetime] | None = None) -> None:
    admin.execute(pgsql.SQL(
        "INSERT INTO {} (id, hostname, pid, queues, concurrency, backend_pid, backend_start, "
        "started_at, heartbeat_at) VALUES (%s, 'lost-host', 4242, '{{default}}', 4, %s, %s, "
        "now() - make_interval(secs => %s), now() - make_interval(secs => %s))").format(
        pgsql.Identifier(schema, "workers")),
        (worker_id, session[0] if session else None, session[1] if session else None,
         heartbeat_age + 1, heartbeat_age))


def claim_as(admin: psycopg.Connection[Any], schema: str, worker_id: str, limit: int) -> list[int]:
    """Claim jobs exactly as a worker does, with the real claim statement."""
    rows = admin.execute(sql.query("claim", schema), ClaimRequest(
        worker_id=worker_id, lease=30.0, limit=limit, queues=["default"], ranked=False,
        oldest=False).params([limit])).fetchall()
    return sorted(int(r[0]) for r in rows)


def wait_for_server_age(admin: psycopg.Connection[Any], seconds: float) -> None:
    # Silence is only counted from the server's start (a restart silences every
    # worker at once), so a young test server must be older than the timeout.
    wait_until(lambda: admin.execute(
        "SELECT now() - pg_postmaster_start_time() > make_interval(secs => %s)",
        (seconds,)).fetchone() == (True,), seconds + 10, interval=0.1, message="server age")


def one_round(dsn: str, schema: str, **options: float) -> bool:
    async def run() -> bool:
        store = AsyncStore(Settings(dsn, schema), probe=False,
                           options=PoolOptions(min_size=1, max_size=1, autocommit=True))
        try:
            return await Maintenance(store, get_logger("test"), interval=1.0,
                                     **options).round()
        finally:
            await store.aclose()

    return asyncio.run(run())


def test_maintenance_round_rescues_the_jobs_of_a_dead_worker(
        app: JobQueue, admin: psycopg.Connection[Any], pg_dsn: str) -> None:
    schema = app.schema
    add_worker(admin, schema, "ghost", heartbeat_age=3600)
    add_worker(admin, schema, "alive", heartbeat_age=0)
    retryable = app.enqueue_many([("work", None)] * 4, max_attempts=3, strict=False)
    last_try = app.enqueue("work", max_attempts=1, strict=False)
    assert claim_as(admin, schema, "ghost", 5) == sorted([*retryable, last_try])
    healthy = app.enqueue("work", strict=False)
    assert claim_as(admin, schema, "alive", 5) == [healthy]
    wait_for_server_age(admin, 2.0)

    assert one_round(pg_dsn, schema, worker_timeout=2.0, session_grace=1.0) is True

    workers = admin.execute(pgsql.SQL("SELECT id FROM {} ORDER BY id").format(
        pgsql.Identifier(schema, "workers"))).fetchall()
    assert workers == [("alive",)]
    for job_id in retryable:
        found = row(admin, schema, "jobs", job_id)
        assert found is not None
        # Back in the queue, due now, with the crashed attempt counted.
        assert (found["state"], found["attempts"], found["locked_by"]) == ("queued", 1, None)
        assert found["locked_until"] is None
        [entry] = found["errors"]
        assert (entry["type"], entry["worker"], entry["attempt"]) == ("WorkerLost", "ghost", 1)
    assert count(admin, schema, "jobs", "id = ANY(%s) AND run_at <= now()",
                 (retryable,)) == 4
    # The job that had no attempt left is dead: a job that kills its worker
    # cannot crash-loop the fleet.
    found = dead(admin, schema, last_try)
    assert (found["reason"], found["attempts"]) == ("crashed", 1)
    assert [e["type"] for e in found["errors"]] == ["WorkerLost"]
    # The live worker's job was left alone.
    kept = row(admin, schema, "jobs", healthy)
    assert kept is not None and (kept["state"], kept["locked_by"]) == ("running", "alive")
    # Nothing lost, nothing doubled; a second round changes nothing.
    assert count(admin, schema, "jobs") + count(admin, schema, "dead_jobs") == 6
    assert one_round(pg_dsn, schema, worker_timeout=2.0, session_grace=1.0) is True
    assert count(admin, schema, "jobs", "state = 'queued'") == 4
    assert count(admin, schema, "dead_jobs") == 1


def test_worker_rescues_and_runs_the_jobs_of_a_dead_worker(
        app: JobQueue, admin: psycopg.Connection[Any]) -> None:
    ran: list[tuple[int, int]] = []

    @app.task(pass_context=True, max_attempts=3)
    def work(ctx: JobContext, n: int) -> None:
        ran.append((n, ctx.attempt))

    add_worker(admin, app.schema, "ghost", heartbeat_age=3600)
    app.enqueue_many([("work", {"n": n}) for n in range(3)])
    last_try = app.enqueue("work", {"n": 3}, max_attempts=1)
    assert len(claim_as(admin, app.schema, "ghost", 10)) == 4
    wait_for_server_age(admin, 2.0)

    with worker_thread(app, maintenance_interval=0.2, worker_timeout=2.0,
                       heartbeat_interval=0.2):
        wait_until(lambda: count(admin, app.schema, "jobs") == 0, 20,
                   message="rescued jobs to run")
    # Each ran once more, as its second attempt (the crashed one counts).
    assert sorted(ran) == [(0, 2), (1, 2), (2, 2)]
    assert dead(admin, app.schema, last_try)["reason"] == "crashed"
    assert count(admin, app.schema, "dead_jobs") == 1
    assert count(admin, app.schema, "workers") == 0


def test_a_worker_whose_session_ended_is_reaped_before_its_heartbeat_times_out(
        app: JobQueue, admin: psycopg.Connection[Any], pg_dsn: str) -> None:
    schema = app.schema
    session_sql = "SELECT pid, backend_start FROM pg_stat_activity WHERE pid = pg_backend_pid()"
    with psycopg.connect(pg_dsn) as gone:
        ended = gone.execute(session_sql).fetchone()
    assert ended is not None
    wait_until(lambda: not session_exists(admin, ended[0]), 10, message="the session to end")
    with psycopg.connect(pg_dsn) as still_there:
        open_session = still_there.execute(session_sql).fetchone()
        assert open_session is not None
        # Both missed heartbeats for 10 s, far from the 60 s timeout; only one
        # still has its session in Postgres.
        add_worker(admin, schema, "ended", heartbeat_age=10, session=tuple(ended))
        add_worker(admin, schema, "stalled", heartbeat_age=10, session=tuple(open_session))
        app.enqueue_many([("work", None)] * 2, strict=False)
        [of_ended] = claim_as(admin, schema, "ended", 1)
        [of_stalled] = claim_as(admin, schema, "stalled", 1)

        assert one_round(pg_dsn, schema, worker_timeout=60.0, session_grace=3.0) is True

        workers = admin.execute(pgsql.SQL("SELECT id FROM {}").format(
            pgsql.Identifier(schema, "workers"))).fetchall()
        assert workers == [("stalled",)]
        requeued = row(admin, schema, "jobs", of_ended)
        kept = row(admin, schema, "jobs", of_stalled)
    assert requeued is not None and requeued["state"] == "queued"
    assert [e["type"] for e in requeued["errors"]] == ["WorkerLost"]
    assert kept is not None and (kept["state"], kept["locked_by"]) == ("running", "stalled")


def test_a_leader_frozen_mid_round_loses_its_lock_in_seconds(app: JobQueue, pg_dsn: str) -> None:
    """A leader that stops inside its round (SIGSTOP, a VM stall) would hold the
    transaction-scoped leader lock for as long as it is frozen, and no other worker
    could reap it: the round's own setting has Postgres end its session instead."""
    from jobqueue.db import fleet
    from jobqueue.worker.maintenance import leader_key

    key = leader_key(app.schema)
    frozen = psycopg.connect(pg_dsn)
    try:
        assert app.store.run(fleet.try_leadership(key), frozen) is True  # and never commits
        started = time.monotonic()

        def other_leads() -> bool:
            with psycopg.connect(pg_dsn) as other:
                return bool(app.store.run(fleet.try_leadership(key), other))

        wait_until(other_leads, 30, interval=0.5, message="another worker to lead")
        assert 9 <= time.monotonic() - started <= 20
        with pytest.raises(psycopg.errors.IdleInTransactionSessionTimeout):  # ended by the server
            frozen.execute("SELECT 1")
    finally:
        frozen.close()
