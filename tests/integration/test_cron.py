"""The cron scheduler against real Postgres: storage, misfires, overlap, leadership, races.

Most tests drive the :class:`Scheduler` directly. ``round()`` is what a worker
runs (lock, sync, fire). ``fire()`` takes "now" from the test, which makes
misfire and overlap cases exact: a test puts a schedule's cursor in the past
(as after downtime) and says what time it is, instead of waiting for minutes
to pass. The last tests run real workers on a per-second schedule.
"""

from __future__ import annotations

import asyncio
import itertools
import statistics
import threading
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta, timezone
from typing import Any, TypeVar

import psycopg
import pytest
from psycopg import sql

from jobqueue import JobContext, JobQueue
from jobqueue.db.store import AsyncStore, PoolOptions
from jobqueue.log import get_logger
from jobqueue.protocol import job_channel
from jobqueue.worker import WorkerConfig
from jobqueue.worker.maintenance import leader_key
from jobqueue.worker.scheduler import Fired, Round, Scheduler, scheduler_key
from tests.helpers import count, wait_until, worker_thread

UTC = timezone.utc
T = TypeVar("T")
LOG = get_logger("test.cron")


def at(hh: int, mm: int, ss: int = 0) -> datetime:
    return datetime(2025, 6, 1, hh, mm, ss, tzinfo=UTC)


def with_scheduler(app: JobQueue, body: Callable[[Scheduler], Awaitable[T]]) -> T:
    """Run ``body(scheduler)`` on a fresh event loop with a pool like the worker's."""

    async def main() -> T:
        store = AsyncStore(app.settings, probe=False,
                           options=PoolOptions(min_size=1, max_size=2, autocommit=True))
        try:
            return await body(Scheduler(store, app.registry, LOG))
        finally:
            await store.aclose()

    return asyncio.run(main())


async def fire_on(s: Scheduler, conn: psycopg.AsyncConnection[Any], name: str, now: datetime,
                  last: datetime | None, cursor: datetime | None) -> Fired | None:
    """The scheduler's fire of schedule ``name`` on ``conn``, in its open transaction."""
    fired: Fired | None = await s.store.run(s.fire(s.schedules[name], now, last, cursor), conn)
    return fired


def run_round(app: JobQueue) -> Round:
    return with_scheduler(app, lambda s: s.round())


def fire(app: JobQueue, name: str, now: datetime) -> Fired:
    """Fire schedule ``name`` as the leader would at ``now``, from its stored cursor."""

    async def body(s: Scheduler) -> Fired:
        async with await s.store.connect() as conn, conn.transaction():
            last, cursor = await stored(conn, app.schema, name)
            outcome = await fire_on(s, conn, name, now, last, cursor)
        assert outcome is not None, "nothing was due"
        return outcome

    return with_scheduler(app, body)


async def stored(conn: psycopg.AsyncConnection[Any], schema: str,
                 name: str) -> tuple[datetime | None, datetime | None]:
    cur = await conn.execute(
        sql.SQL("SELECT last_fire_at, next_fire_at FROM {} WHERE name = %s")
        .format(sql.Identifier(schema, "cron")), (name,))
    row = await cur.fetchone()
    assert row is not None
    return row[0], row[1]


def cron_row(admin: psycopg.Connection[Any], schema: str, name: str) -> dict[str, Any] | None:
    cur = admin.execute(sql.SQL("SELECT * FROM {} WHERE name = %s")
                        .format(sql.Identifier(schema, "cron")), (name,))
    row = cur.fetchone()
    if row is None:
        return None
    assert cur.description is not None
    return dict(zip([c.name for c in cur.description], row, strict=True))


def set_cursor(admin: psycopg.Connection[Any], schema: str, name: str, next_fire_at: datetime,
               last_fire_at: datetime | None = None) -> None:
    """Put a schedule's cursor where downtime would have left it."""
    admin.execute(sql.SQL("UPDATE {} SET next_fire_at = %s, last_fire_at = %s WHERE name = %s")
                  .format(sql.Identifier(schema, "cron")), (next_fire_at, last_fire_at, name))


def cron_jobs(admin: psycopg.Connection[Any], schema: str, name: str) -> list[dict[str, Any]]:
    cur = admin.execute(
        sql.SQL("SELECT id, queue, task, args, priority, run_at, max_attempts, unique_key, "
                "cron_name, state FROM {} WHERE cron_name = %s ORDER BY run_at, id")
        .format(sql.Identifier(schema, "jobs")), (name,))
    assert cur.description is not None
    names = [c.name for c in cur.description]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def stored_now(app: JobQueue, name: str) -> None:
    """Have a leader round store the app's schedules (fires nothing: they are new)."""
    result = run_round(app)
    assert result.led and not any(f.job_ids for f in result.fired), result


# -- storage -----------------------------------------------------------------------------------


def test_first_round_stores_the_schedule_and_fires_nothing_from_the_past(
        app: JobQueue, admin: psycopg.Connection[Any]) -> None:
    @app.task(queue="reports", priority=3, max_attempts=2)
    def report(kind: str) -> None: ...

    app.cron("nightly", "0 3 * * *", report, {"kind": "daily"}, timezone="Europe/Paris")
    result = run_round(app)
    assert result.led and result.changes == [("added", "nightly")]
    assert count(admin, app.schema, "jobs") == 0
    row = cron_row(admin, app.schema, "nightly")
    assert row is not None
    assert {k: row[k] for k in ("expression", "task", "args", "queue", "timezone", "overlap",
                                "priority", "catch_up", "last_fire_at")} == {
        "expression": "0 3 * * *", "task": "report", "args": {"kind": "daily"},
        "queue": "reports", "timezone": "Europe/Paris", "overlap": "skip", "priority": 3,
        "catch_up": 1, "last_fire_at": None}
    # The cursor is the first tick after the round: 03:00 Paris time, tomorrow at the latest.
    assert row["next_fire_at"] == app.schedules["nightly"].cron.next_after(result.now)
    assert result.now < row["next_fire_at"] <= result.now + timedelta(days=1)
    # A second round changes nothing.
    again = run_round(app)
    assert again.changes == [] and cron_row(admin, app.schema, "nightly") == row


def test_leadership_is_an_advisory_lock_of_its_own(
        app: JobQueue, pg_dsn: str, admin: psycopg.Connection[Any]) -> None:
    app.cron("every-minute", "* * * * *", "t")
    assert scheduler_key(app.schema) != leader_key(app.schema)
    assert scheduler_key(app.schema) != scheduler_key(app.schema + "x")
    with psycopg.connect(pg_dsn) as holder:
        # Another scheduler in the middle of its round.
        holder.execute("SELECT pg_advisory_xact_lock(%s)", (scheduler_key(app.schema),))
        result = run_round(app)
        assert not result.led and result.changes == []
        assert cron_row(admin, app.schema, "every-minute") is None
        # Maintenance's lock is a different lock: holding it does not stop the scheduler.
        holder.rollback()
        holder.execute("SELECT pg_advisory_xact_lock(%s)", (leader_key(app.schema),))
        assert run_round(app).led
    assert cron_row(admin, app.schema, "every-minute") is not None


# -- misfires -----------------------------------------------------------------------------------


def test_after_downtime_only_the_latest_missed_tick_fires(
        app: JobQueue, admin: psycopg.Connection[Any]) -> None:
    @app.task(queue="q1", priority=-2, max_attempts=7)
    def tick(n: int) -> None: ...

    app.cron("each-minute", "* * * * *", tick, {"n": 1})
    stored_now(app, "each-minute")
    set_cursor(admin, app.schema, "each-minute", at(10, 0), last_fire_at=at(9, 59))
    outcome = fire(app, "each-minute", now=at(10, 9, 30))  # ten ticks were missed
    assert not outcome.lost and outcome.dropped
    jobs = cron_jobs(admin, app.schema, "each-minute")
    assert len(jobs) == 1 and outcome.job_ids == (jobs[0]["id"],)
    job = jobs[0]
    assert job == {"id": job["id"], "queue": "q1", "task": "tick", "args": {"n": 1},
                   "priority": -2, "run_at": at(10, 9), "max_attempts": 7,
                   "unique_key": "cron:each-minute:2025-06-01T10:09:00+00:00",
                   "cron_name": "each-minute", "state": "queued"}
    row = cron_row(admin, app.schema, "each-minute")
    assert row is not None
    assert (row["last_fire_at"], row["next_fire_at"]) == (at(10, 9), at(10, 10))


@pytest.mark.parametrize(("cursor", "expected"), [
    (at(10, 0), [at(10, 7), at(10, 8), at(10, 9)]),  # ten missed: the three most recent
    (at(10, 8), [at(10, 8), at(10, 9)]),  # two missed: both
])
def test_catch_up_fires_at_most_n_missed_ticks(
        app: JobQueue, admin: psycopg.Connection[Any], cursor: datetime,
        expected: list[datetime]) -> None:
    app.cron("each-minute", "* * * * *", "t", overlap="allow", catch_up=3)
    stored_now(app, "each-minute")
    set_cursor(admin, app.schema, "each-minute", cursor)
    outcome = fire(app, "each-minute", now=at(10, 9, 30))
    assert [j["run_at"] for j in cron_jobs(admin, app.schema, "each-minute")] == expected
    assert list(outcome.ticks) == expected
    assert outcome.dropped == (cursor < expected[0])
    row = cron_row(admin, app.schema, "each-minute")
    assert row is not None and (row["last_fire_at"], row["next_fire_at"]) == (at(10, 9),
                                                                              at(10, 10))
    # Nothing is due any more until 10:10.
    assert with_scheduler(app, lambda s: _fire_now(s, app, "each-minute", at(10, 9, 59))) is None


async def _fire_now(s: Scheduler, app: JobQueue, name: str, now: datetime) -> Fired | None:
    async with await s.store.connect() as conn, conn.transaction():
        last, cursor = await stored(conn, app.schema, name)
        return await fire_on(s, conn, name, now, last, cursor)


# -- overlap ------------------------------------------------------------------------------------


@pytest.mark.parametrize("previous", ["queued", "running"])
def test_overlap_skip_does_not_enqueue_while_the_previous_run_is_live(
        app: JobQueue, admin: psycopg.Connection[Any], previous: str) -> None:
    app.cron("each-minute", "* * * * *", "t")  # overlap="skip" is the default
    stored_now(app, "each-minute")
    set_cursor(admin, app.schema, "each-minute", at(10, 0))
    first = fire(app, "each-minute", now=at(10, 0, 1))
    assert len(first.job_ids) == 1 and not first.skipped
    if previous == "running":
        admin.execute(sql.SQL("UPDATE {} SET state = 'running', locked_by = 'w' WHERE id = %s")
                      .format(sql.Identifier(app.schema, "jobs")), (first.job_ids[0],))
    skipped = fire(app, "each-minute", now=at(10, 1, 1))
    assert skipped.skipped and skipped.job_ids == () and not skipped.lost
    assert [j["id"] for j in cron_jobs(admin, app.schema, "each-minute")] == list(first.job_ids)
    # The skipped tick still counts as fired: the cursor moved past it.
    row = cron_row(admin, app.schema, "each-minute")
    assert row is not None and (row["last_fire_at"], row["next_fire_at"]) == (at(10, 1),
                                                                              at(10, 2))
    # Once the previous run is gone (succeeded), the next tick fires.
    admin.execute(sql.SQL("DELETE FROM {} WHERE id = %s")
                  .format(sql.Identifier(app.schema, "jobs")), (first.job_ids[0],))
    third = fire(app, "each-minute", now=at(10, 2, 1))
    assert not third.skipped and list(third.ticks) == [at(10, 2)]
    assert count(admin, app.schema, "jobs") == 1


def test_overlap_skip_with_catch_up_fires_a_single_run(
        app: JobQueue, admin: psycopg.Connection[Any]) -> None:
    app.cron("each-minute", "* * * * *", "t", catch_up=3)
    stored_now(app, "each-minute")
    set_cursor(admin, app.schema, "each-minute", at(10, 0))
    outcome = fire(app, "each-minute", now=at(10, 9, 30))
    # Ticks are taken in order and each later one would overlap the first.
    assert list(outcome.ticks) == [at(10, 7)] and len(outcome.job_ids) == 1
    assert count(admin, app.schema, "jobs") == 1


def test_overlap_allow_enqueues_while_the_previous_run_is_live(
        app: JobQueue, admin: psycopg.Connection[Any]) -> None:
    app.cron("each-minute", "* * * * *", "t", overlap="allow")
    stored_now(app, "each-minute")
    set_cursor(admin, app.schema, "each-minute", at(10, 0))
    for minute in range(3):
        outcome = fire(app, "each-minute", now=at(10, minute, 1))
        assert len(outcome.job_ids) == 1 and not outcome.skipped
    assert [j["run_at"] for j in cron_jobs(admin, app.schema, "each-minute")] == [
        at(10, 0), at(10, 1), at(10, 2)]


# -- one job per tick, whatever happens ---------------------------------------------------------


def test_two_leaders_at_once_fire_a_tick_once(
        app: JobQueue, pg_dsn: str, admin: psycopg.Connection[Any]) -> None:
    """Two schedulers that both read the same cursor: the compare-and-set lets one through.

    The first has fired but not committed; the second blocks on the cron row,
    then finds it moved and inserts nothing. After the first tick's job has
    finished and left the table (so the unique key no longer holds it), a
    stale leader still cannot fire the tick again.
    """
    app.cron("each-minute", "* * * * *", "t", overlap="allow")
    stored_now(app, "each-minute")
    set_cursor(admin, app.schema, "each-minute", at(10, 0))
    name, now = "each-minute", at(10, 0, 1)

    async def body(s: Scheduler) -> tuple[Fired | None, Fired | None, Fired | None]:
        first = await psycopg.AsyncConnection.connect(pg_dsn)
        second = await psycopg.AsyncConnection.connect(pg_dsn)
        try:
            last, cursor = await stored(first, app.schema, name)
            assert (last, cursor) == await stored(second, app.schema, name)
            a = await fire_on(s, first, name, now, last, cursor)  # not committed yet
            b_task = asyncio.ensure_future(fire_on(s, second, name, now, last, cursor))
            pid = second.info.backend_pid

            def blocked() -> bool:
                row = admin.execute("SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s",
                                    (pid,)).fetchone()
                return row is not None and row[0] == "Lock"

            while not blocked():  # bounded by the test timeout, and checked right after
                await asyncio.sleep(0.01)
            assert not b_task.done()
            await first.commit()
            b = await b_task
            await second.commit()
            # The job finished: it left the table, and its unique key with it.
            await first.execute(sql.SQL("DELETE FROM {} WHERE cron_name = %s")
                                .format(sql.Identifier(app.schema, "jobs")), (name,))
            await first.commit()
            c = await fire_on(s, second, name, now, last, cursor)  # a stale leader, later
            await second.commit()
            return a, b, c
        finally:
            await first.close()
            await second.close()

    a, b, c = with_scheduler(app, lambda s: asyncio.wait_for(body(s), 60))
    assert a is not None and not a.lost and len(a.job_ids) == 1
    assert b is not None and b.lost and b.job_ids == ()
    assert c is not None and c.lost and c.job_ids == ()
    assert count(admin, app.schema, "jobs") == 0  # the one job ran; nobody fired it again
    row = cron_row(admin, app.schema, name)
    assert row is not None and row["last_fire_at"] == at(10, 0)


def test_unique_key_stops_a_second_live_job_for_one_tick(
        app: JobQueue, admin: psycopg.Connection[Any]) -> None:
    # The second guard: even if the cursor went back (restored by hand, say)
    # while the tick's job is still queued, the tick is not enqueued twice.
    app.cron("each-minute", "* * * * *", "t", overlap="allow")
    stored_now(app, "each-minute")
    set_cursor(admin, app.schema, "each-minute", at(10, 0))
    first = fire(app, "each-minute", now=at(10, 0, 1))
    set_cursor(admin, app.schema, "each-minute", at(10, 0))
    again = fire(app, "each-minute", now=at(10, 0, 2))
    assert len(first.job_ids) == 1 and again.job_ids == () and not again.lost
    assert len(cron_jobs(admin, app.schema, "each-minute")) == 1


# -- schedules changing in code -------------------------------------------------------------------


def test_removed_schedules_are_retired_and_a_rename_does_not_fire_twice(
        pg_dsn: str, migrated: str, admin: psycopg.Connection[Any]) -> None:
    old = JobQueue(pg_dsn, schema=migrated)
    old.cron("report", "* * * * *", "t", overlap="allow")
    old.cron("keep", "*/5 * * * *", "t")
    stored_now(old, "report")
    set_cursor(admin, migrated, "report", at(10, 0))
    # A cursor the real clock has not reached, so the real round below fires nothing.
    later = datetime(2099, 1, 1, tzinfo=UTC)
    set_cursor(admin, migrated, "keep", later, last_fire_at=later - timedelta(minutes=5))
    assert len(fire(old, "report", now=at(10, 0, 1)).job_ids) == 1

    # The next release renames "report" to "daily-report" (same expression).
    new = JobQueue(pg_dsn, schema=migrated)
    new.cron("daily-report", "* * * * *", "t", overlap="allow")
    new.cron("keep", "*/5 * * * *", "t")
    result = run_round(new)
    assert sorted(result.changes) == [("added", "daily-report"), ("retired", "report")]
    assert cron_row(admin, migrated, "report") is None
    renamed = cron_row(admin, migrated, "daily-report")
    assert renamed is not None and renamed["last_fire_at"] is None
    assert renamed["next_fire_at"] > result.now  # starts from now: no past tick
    assert len(cron_jobs(admin, migrated, "daily-report")) == 0
    assert count(admin, migrated, "jobs") == 1  # only the old name's one job
    kept = cron_row(admin, migrated, "keep")  # untouched schedules keep their cursor
    assert kept is not None
    assert (kept["last_fire_at"], kept["next_fire_at"]) == (later - timedelta(minutes=5), later)
    old.close()
    new.close()


def test_changed_expression_restarts_from_now_changed_args_keep_the_cursor(
        pg_dsn: str, migrated: str, admin: psycopg.Connection[Any]) -> None:
    v1 = JobQueue(pg_dsn, schema=migrated)
    v1.cron("a", "* * * * *", "t", {"v": 1})
    v1.cron("b", "* * * * *", "t", {"v": 1})
    stored_now(v1, "a")
    set_cursor(admin, migrated, "a", at(10, 0))
    set_cursor(admin, migrated, "b", at(10, 0))

    v2 = JobQueue(pg_dsn, schema=migrated)
    v2.cron("a", "*/5 * * * *", "t", {"v": 1})  # new expression
    v2.cron("b", "* * * * *", "t", {"v": 2})  # new args only
    result = run_round(v2)
    assert sorted(result.changes) == [("changed", "a"), ("changed", "b")]
    a = cron_row(admin, migrated, "a")
    assert a is not None and a["expression"] == "*/5 * * * *"
    assert a["next_fire_at"] == v2.schedules["a"].cron.next_after(result.now)
    assert cron_jobs(admin, migrated, "a") == []  # the old cursor's ticks are not caught up
    # "b" kept its cursor, so the round fired its latest missed tick, with the new args.
    (job,) = cron_jobs(admin, migrated, "b")
    assert job["args"] == {"v": 2}
    assert job["run_at"] == v2.schedules["b"].cron.recent(result.now, 1)[0]
    v1.close()
    v2.close()


def test_definitions_are_synced_on_first_lead_and_restored_if_retired_elsewhere(
        app: JobQueue, admin: psycopg.Connection[Any]) -> None:
    app.cron("each-minute", "* * * * *", "t")

    async def body(s: Scheduler) -> list[Round]:
        first = await s.round()
        # A leader of another release, whose app lacks the schedule, retires it.
        admin.execute(sql.SQL("DELETE FROM {}").format(sql.Identifier(app.schema, "cron")))
        second = await s.round()  # within sync_interval: notices, fires nothing
        third = await s.round()  # stores it again
        return [first, second, third]

    first, second, third = with_scheduler(app, body)
    assert first.changes == [("added", "each-minute")]
    assert second.led and second.changes == [] and second.fired == []
    assert third.changes == [("added", "each-minute")]
    row = cron_row(admin, app.schema, "each-minute")
    assert row is not None and row["next_fire_at"] > third.now  # afresh: no past tick
    assert count(admin, app.schema, "jobs") == 0


# -- NOTIFY and the worker ------------------------------------------------------------------------


def test_fired_jobs_notify_their_queue(app: JobQueue, pg_dsn: str,
                                       admin: psycopg.Connection[Any]) -> None:
    app.cron("each-minute", "* * * * *", "t", queue="cronq")
    stored_now(app, "each-minute")
    with psycopg.connect(pg_dsn, autocommit=True) as listener:
        listener.execute(sql.SQL("LISTEN {}").format(sql.Identifier(job_channel(app.schema))))
        set_cursor(admin, app.schema, "each-minute", at(10, 0))
        assert len(fire(app, "each-minute", now=at(10, 0, 1)).job_ids) == 1
        got = [(n.channel, n.payload) for n in listener.notifies(timeout=10, stop_after=1)]
    assert got == [(job_channel(app.schema), "cronq")]


def test_schedule_of_a_task_this_app_does_not_know(
        app: JobQueue, admin: psycopg.Connection[Any]) -> None:
    app.cron("elsewhere", "* * * * *", "task_of_another_app")
    stored_now(app, "elsewhere")
    set_cursor(admin, app.schema, "elsewhere", at(10, 0))
    fire(app, "elsewhere", now=at(10, 0, 1))
    (job,) = cron_jobs(admin, app.schema, "elsewhere")
    assert (job["task"], job["queue"], job["max_attempts"]) == ("task_of_another_app",
                                                                "default", 5)


def test_worker_fires_a_per_second_schedule_once_per_tick(
        app: JobQueue, pg_dsn: str, admin: psycopg.Connection[Any]) -> None:
    runs: list[tuple[int, str, datetime, datetime]] = []
    lock = threading.Lock()

    @app.task(pass_context=True)
    def beat(ctx: JobContext, label: str) -> None:
        # The tick a job is for is on its row: unique_key and run_at.
        with psycopg.connect(pg_dsn) as c:
            row = c.execute(sql.SQL("SELECT unique_key, run_at, created_at FROM {} WHERE id = %s")
                            .format(sql.Identifier(app.schema, "jobs")), (ctx.id,)).fetchone()
        assert row is not None and label == "x"
        with lock:
            runs.append((ctx.id, row[0], row[1], row[2]))

    app.cron("beat", "* * * * * *", beat, {"label": "x"}, overlap="allow", catch_up=3)
    with worker_thread(app) as worker:
        assert "scheduler" in worker.services
        wait_until(lambda: len(runs) >= 4, 30, message="four ticks to run")
    with lock:
        done = sorted(runs, key=lambda r: r[2])
    assert len({r[0] for r in done}) == len(done), "a job ran twice"
    assert [r[1] for r in done] == [f"cron:beat:{r[2].isoformat()}" for r in done]
    # A tick fired as the worker stopped may be left queued: it counts, once.
    ticks = sorted([r[2] for r in done] + [j["run_at"] for j in cron_jobs(admin, app.schema,
                                                                          "beat")])
    assert len(set(ticks)) == len(ticks), "a tick fired twice"
    assert all(t.microsecond == 0 for t in ticks)
    assert [(b - a).total_seconds() for a, b in itertools.pairwise(ticks)] == \
        [1.0] * (len(ticks) - 1), "a tick was skipped"
    # The scheduler wakes for the tick: jobs are enqueued well within the second.
    lateness = [(created - tick).total_seconds() for _, _, tick, created in done]
    assert statistics.median(lateness) < 0.5, lateness


def test_only_workers_of_apps_with_schedules_run_a_scheduler(app: JobQueue) -> None:
    @app.task()
    def noop() -> None: ...

    with worker_thread(app) as worker:
        assert "scheduler" not in worker.services
    app.cron("later", "0 0 1 1 *", noop)
    burst = app.worker(WorkerConfig(burst=True, handle_signals=False))
    burst.run()  # returns once drained
    assert "scheduler" not in burst.services
