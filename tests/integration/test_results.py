"""Results, history and progress against real Postgres: what became of a job.

Each test runs a real worker in a thread on the test's schema and reads the
outcome back through ``app.job``, ``app.result`` and the tables themselves.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from datetime import datetime, timedelta, timezone
from typing import Any

import psycopg
import pytest
from psycopg import sql

import jobqueue
from jobqueue import JobContext, JobQueue
from tests.helpers import count, wait_until, worker_thread


def history_row(admin: psycopg.Connection[Any], schema: str, job_id: int) -> dict[str, Any]:
    cur = admin.cursor(row_factory=psycopg.rows.dict_row)
    found = cur.execute(sql.SQL("SELECT * FROM {} WHERE id = %s").format(
        sql.Identifier(schema, "job_history")), (job_id,)).fetchone()
    assert found is not None, f"job {job_id} has no history row"
    return found


def test_success_moves_the_job_into_history_with_its_result(
        app: JobQueue, admin: psycopg.Connection[Any]) -> None:
    @app.task(pass_context=True)
    def receipt(ctx: JobContext, order: int) -> dict[str, Any]:
        return {"order": order, "sent": True, "by": ctx.worker_id}

    job_id = app.enqueue(receipt, {"order": 42}, correlation_id="req-7")
    assert app.job(job_id).state == "queued"
    with worker_thread(app) as worker:
        assert app.result(job_id, timeout=10) == {"order": 42, "sent": True, "by": worker.id}
    assert count(admin, app.schema, "jobs") == 0
    row = history_row(admin, app.schema, job_id)
    assert (row["task"], row["queue"], row["args"], row["attempts"], row["worker"],
            row["correlation_id"]) == ("receipt", "default", {"order": 42}, 1, worker.id, "req-7")
    assert row["created_at"] <= row["started_at"] <= row["finished_at"] < row["expires_at"]
    # The app's default retention: a week.
    assert abs((row["expires_at"] - row["finished_at"]) - timedelta(days=7)) < timedelta(seconds=1)
    info = app.job(job_id)
    assert (info.state, info.result, info.attempts, info.worker) == (
        "succeeded", row["result"], 1, worker.id)
    assert info.duration is not None and info.duration >= 0
    [entry] = app.history(task=receipt)
    assert (entry.id, entry.has_result) == (job_id, True)


def test_job_states_through_a_jobs_life(app: JobQueue) -> None:
    gate = threading.Event()

    @app.task(max_attempts=1)
    def held() -> None:
        assert gate.wait(20)

    @app.task(max_attempts=1)
    def fails() -> None:
        raise ValueError("no such customer")

    running = app.enqueue(held)
    later = app.enqueue(held, delay=3600)
    cancelled = app.enqueue(held, delay=3600)
    assert app.cancel(cancelled) == "cancelled"
    dead = app.enqueue(fails)
    assert app.job(later).state == "scheduled"
    assert app.job(cancelled).state == "cancelled"
    with worker_thread(app):
        wait_until(lambda: app.job(running).state == "running", message="the job to run")
        info = app.job(running)
        assert info.started_at is not None and info.worker is not None
        with pytest.raises(jobqueue.JobFailed) as failed:
            app.result(dead, timeout=10)
        assert (failed.value.reason, failed.value.error) == (
            "exhausted", "ValueError: no such customer")
        gate.set()
        assert app.result(running, timeout=10) is None
    assert app.job(running).state == "succeeded"
    dead_info = app.job(dead)
    assert (dead_info.state, dead_info.reason, dead_info.last_error) == (
        "dead", "exhausted", "ValueError: no such customer")
    with pytest.raises(jobqueue.JobNotFound, match="no job 987654321"):
        app.job(987654321)
    with pytest.raises(jobqueue.JobNotFound):
        app.result(987654321, timeout=1)


def test_result_waits_are_woken_by_notify_and_time_out(app: JobQueue) -> None:
    go = threading.Event()

    @app.task
    def answer() -> int:
        assert go.wait(20)
        return 42

    job_id = app.enqueue(answer)
    with worker_thread(app):
        with pytest.raises(TimeoutError, match=f"job {job_id} did not finish within 0.3s"):
            app.result(job_id, timeout=0.3)
        got: list[Any] = []
        waiter = threading.Thread(target=lambda: got.append(app.result(job_id, timeout=20)))
        waiter.start()
        time.sleep(0.3)  # the waiter is listening, nothing has happened yet
        assert not got
        released = time.monotonic()
        go.set()
        waiter.join(20)
        # Well under the re-read interval (5 s): the NOTIFY woke it.
        assert got == [42] and time.monotonic() - released < 2.0


def test_result_async_and_job_async(app: JobQueue) -> None:
    @app.task
    async def double(n: int) -> int:
        await asyncio.sleep(0.05)
        return n * 2

    @app.task(max_attempts=1)
    async def broken() -> None:
        raise jobqueue.PermanentError("bad input")

    async def main() -> None:
        ok, bad = await app.enqueue_async(double, {"n": 21}), await app.enqueue_async(broken)
        assert await app.result_async(ok, timeout=10) == 42
        with pytest.raises(jobqueue.JobFailed, match="permanent"):
            await app.result_async(bad, timeout=10)
        assert (await app.job_async(ok)).result == 42
        await app.aclose()

    with worker_thread(app):
        asyncio.run(main())


def test_history_false_keeps_nothing_and_says_so(
        app: JobQueue, admin: psycopg.Connection[Any]) -> None:
    waiting = threading.Event()

    @app.task(history=False)
    def fire_and_forget() -> str:
        assert waiting.wait(20)  # finish only once the waiter waits
        return "gone"

    @app.task(result=False)
    def no_result() -> str:
        return "not kept"

    job_id, other = app.enqueue(fire_and_forget), app.enqueue(no_result)
    with worker_thread(app):
        threading.Timer(0.5, waiting.set).start()
        with pytest.raises(jobqueue.JobNotFound, match="keeps no history"):
            app.result(job_id, timeout=10)
        assert app.result(other, timeout=10) is None
    assert count(admin, app.schema, "jobs") == 0
    assert count(admin, app.schema, "job_history", "id = %s", (job_id,)) == 0
    with pytest.raises(jobqueue.JobNotFound):
        app.job(job_id)
    assert history_row(admin, app.schema, other)["result"] is None


def test_app_and_task_retention(pg_dsn: str, migrated: str,
                                admin: psycopg.Connection[Any]) -> None:
    app = JobQueue(pg_dsn, schema=migrated, history=timedelta(days=2))

    @app.task
    def default_kept() -> None: ...

    @app.task(history=timedelta(hours=1))
    def briefly_kept() -> None: ...

    a, b = app.enqueue(default_kept), app.enqueue(briefly_kept)
    with worker_thread(app):
        app.result(a, timeout=10)
        app.result(b, timeout=10)
    for job_id, kept in ((a, timedelta(days=2)), (b, timedelta(hours=1))):
        row = history_row(admin, migrated, job_id)
        assert abs(row["expires_at"] - row["finished_at"] - kept) < timedelta(seconds=1)
    app.close()


@pytest.mark.parametrize("returned, message", [
    ("x" * 70_000, "70002 bytes encoded, over the 65536-byte limit"),
    ({"when": datetime(2026, 1, 1)}, "not JSON-serializable"),
])
def test_a_result_that_cannot_be_stored_fails_the_attempt_for_good(
        app: JobQueue, returned: Any, message: str) -> None:
    @app.task
    def bad_result() -> Any:
        return returned

    job_id = app.enqueue(bad_result)
    with worker_thread(app), pytest.raises(jobqueue.JobFailed) as failed:
        app.result(job_id, timeout=10)
    assert failed.value.reason == "permanent"
    assert "ResultError" in (failed.value.error or "") and message in (failed.value.error or "")
    assert "result=False" in (failed.value.error or "")


def test_a_forked_handler_returns_its_result(app: JobQueue) -> None:
    @app.task(timeout=10)
    def in_child(n: int) -> list[int]:
        return list(range(n))

    job_id = app.enqueue(in_child, {"n": 3})
    with worker_thread(app):
        assert app.result(job_id, timeout=10) == [0, 1, 2]


def test_progress_is_throttled_visible_and_kept(
        app: JobQueue, admin: psycopg.Connection[Any]) -> None:
    halfway = threading.Event()
    finish = threading.Event()

    @app.task(pass_context=True)
    def crunch(ctx: JobContext, n: int) -> int:
        for i in range(n // 2):
            ctx.progress(i + 1, n, "crunching")  # far more often than it is written
        halfway.set()
        assert finish.wait(20)
        for i in range(n // 2, n):
            ctx.progress(i + 1, n, "crunching")
        return n

    seen: list[float] = []
    job_id = app.enqueue(crunch, {"n": 200_000})
    with worker_thread(app) as worker:
        assert halfway.wait(20)
        # Written within a throttle interval of the handler's last report.
        report = wait_until(lambda: (r := app.job(job_id).report) and r.done == 100_000 and r,
                            message="the halfway progress to be written")
        assert (report.done, report.total, report.note) == (100_000, 200_000, "crunching")
        assert report.fraction == 0.5
        waiter = threading.Thread(target=lambda: app.result(
            job_id, timeout=20, on_progress=lambda p: seen.append(p.done)))
        waiter.start()
        time.sleep(0.5)
        finish.set()
        waiter.join(20)
        writer = worker.services["progress"]
    # 200,000 reports, a handful of writes (at most four a second, plus the final one).
    assert 1 <= writer.writes <= 20  # type: ignore[attr-defined]
    assert seen and seen[0] == 100_000
    assert history_row(admin, app.schema, job_id)["progress"]["done"] == 200_000
    with pytest.raises(ValueError, match="finite number"):
        JobContext(1, "t", "q", 1, 1, "w").progress(float("nan"))


# -- retention by partition ------------------------------------------------------------------


def partitions(admin: psycopg.Connection[Any], schema: str) -> list[str]:
    return [r[0] for r in admin.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "JOIN pg_class p ON p.oid = i.inhparent JOIN pg_namespace n ON n.oid = p.relnamespace "
        "WHERE n.nspname = %s AND p.relname = 'job_history' ORDER BY c.relname",
        (schema,)).fetchall()]


def maintain(admin: psycopg.Connection[Any], schema: str, now: datetime) -> int:
    return int(admin.execute(sql.SQL("SELECT {}.maintain_history(%s)").format(
        sql.Identifier(schema)), (now,)).fetchone()[0])  # type: ignore[index]


def insert_history(admin: psycopg.Connection[Any], schema: str, job_id: int,
                   finished: datetime, expires: datetime) -> None:
    admin.execute(sql.SQL(
        "INSERT INTO {} (id, queue, task, args, attempts, priority, errors, created_at, "
        "finished_at, expires_at) VALUES (%s, 'default', 't', '{{}}', 1, 0, '[]', %s, %s, %s)"
    ).format(sql.Identifier(schema, "job_history")), (job_id, finished, finished, expires))


def test_retention_drops_whole_partitions_once_their_rows_expired(
        app: JobQueue, admin: psycopg.Connection[Any]) -> None:
    today = datetime.now(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
    day = today.strftime("%Y%m%d")
    made = partitions(admin, app.schema)
    # The migration made today's partition and three ahead (and the default).
    assert f"job_history_{day}" in made and len(made) == 5
    ten_days_ago = today - timedelta(days=10)
    assert maintain(admin, app.schema, ten_days_ago) == 0  # makes that day's partitions
    old = f"job_history_{ten_days_ago.strftime('%Y%m%d')}"
    nine = f"job_history_{(ten_days_ago + timedelta(days=1)).strftime('%Y%m%d')}"
    assert {old, nine} <= set(partitions(admin, app.schema))
    noon = ten_days_ago + timedelta(hours=12)
    insert_history(admin, app.schema, 1, noon, noon + timedelta(days=7))  # expired 3 days ago
    insert_history(admin, app.schema, 2, noon + timedelta(days=1),
                   noon + timedelta(days=30))  # kept 30 days: its day stays
    insert_history(admin, app.schema, 3, today, today - timedelta(seconds=1))
    # Readers never see an expired row, dropped or not yet.
    for expired in (1, 3):
        with pytest.raises(jobqueue.JobNotFound):
            app.job(expired)
    assert app.job(2).state == "succeeded"

    assert maintain(admin, app.schema, datetime.now(timezone.utc)) >= 1
    left = partitions(admin, app.schema)
    assert old not in left and nine in left
    assert count(admin, app.schema, "job_history", "id = 2") == 1
    # No DELETE ran on a daily partition: the old day is gone as a table.
    assert count(admin, app.schema, "history_partitions", "name = %s", (old,)) == 0


def test_the_default_partition_catches_days_without_one(
        app: JobQueue, admin: psycopg.Connection[Any]) -> None:
    long_ago = datetime(2001, 5, 5, 12, tzinfo=timezone.utc)
    insert_history(admin, app.schema, 11, long_ago, long_ago + timedelta(days=1))
    insert_history(admin, app.schema, 12, long_ago, datetime.now(timezone.utc) + timedelta(days=1))
    assert count(admin, app.schema, "job_history_default") == 2
    maintain(admin, app.schema, datetime.now(timezone.utc))
    assert [r[0] for r in admin.execute(sql.SQL("SELECT id FROM {}").format(
        sql.Identifier(app.schema, "job_history_default"))).fetchall()] == [12]


def test_the_leader_keeps_partitions_ahead(app: JobQueue, admin: psycopg.Connection[Any]) -> None:
    admin.execute(sql.SQL("DELETE FROM {}").format(
        sql.Identifier(app.schema, "history_partitions")))
    for name in partitions(admin, app.schema):
        if name != "job_history_default":
            admin.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(app.schema, name)))
    with worker_thread(app, maintenance_interval=0.2):
        wait_until(lambda: len(partitions(admin, app.schema)) == 5, 20,
                   message="the leader to make today's partition and three ahead")


def test_every_job_ends_in_exactly_one_place(
        app: JobQueue, admin: psycopg.Connection[Any]) -> None:
    @app.task(max_attempts=2, retry=jobqueue.Retry(base=0.01, cap=0.02))
    def maybe(i: int) -> int:
        if i % 5 == 0:
            raise ValueError("every fifth")
        return i

    ids = app.enqueue_many([(maybe, {"i": i}) for i in range(500)])
    with worker_thread(app, concurrency=8):
        wait_until(lambda: count(admin, app.schema, "jobs") == 0, 60, message="the drain")
    history = {r[0] for r in admin.execute(sql.SQL("SELECT id FROM {}").format(
        sql.Identifier(app.schema, "job_history"))).fetchall()}
    dead = {r[0] for r in admin.execute(sql.SQL("SELECT id FROM {}").format(
        sql.Identifier(app.schema, "dead_jobs"))).fetchall()}
    assert not history & dead and history | dead == set(ids)
    assert len(dead) == 100 and count(admin, app.schema, "job_history") == 400


@pytest.mark.parametrize("statement", ["ack_succeeded", "ack_dead", "ack_retry"])
def test_acks_delete_by_the_primary_key_even_with_stale_statistics(
        app: JobQueue, admin: psycopg.Connection[Any], statement: str) -> None:
    """Joined with their values as unnest arrays, the acks were planned as a nested
    loop over the whole table, or over both sides (the planner believes no row is
    running: statistics from before the claim): 50-70 ms for 500 acks at 20,000 jobs.
    With the values looked up by id they are one scan of jobs_pkey, and fast."""
    from jobqueue import sql as queries
    from jobqueue.db.jobs import per_job

    jobs = sql.Identifier(app.schema, "jobs")
    app.enqueue_many([("x", {"seq": i}) for i in range(20_000)], strict=False)
    admin.execute(sql.SQL("ANALYZE {}").format(jobs))
    ids = [r[0] for r in admin.execute(sql.SQL(
        "UPDATE {} SET state = 'running', locked_by = 'w', attempts = 1 WHERE id IN "
        "(SELECT id FROM {} ORDER BY id LIMIT 500) RETURNING id").format(jobs, jobs)).fetchall()]
    values = {"ack_succeeded": ("1", "3600.0", "null", "null"), "ack_retry": ("1", "1.0", "{}"),
              "ack_dead": ('"exhausted"', "null")}[statement]
    params = {"ids": ids, "per_job": per_job((i, values) for i in ids), "worker_id": "w",
              "awaited_channel": "unused", "channel": "unused"}
    admin.execute("SET plan_cache_mode = force_custom_plan")
    with admin.transaction(force_rollback=True):
        plan = "\n".join(r[0] for r in admin.execute(
            sql.SQL("EXPLAIN ANALYZE ") + queries.query(statement, app.schema),
            params).fetchall())
    assert "jobs_pkey" in plan and "Seq Scan on jobs" not in plan, plan
    lines = [line.strip() for line in plan.splitlines()]
    write = next(i for i, line in enumerate(lines)
                 if line.startswith(("->  Delete on jobs", "Delete on jobs", "->  Update on jobs",
                                     "Update on jobs")))
    # The write reads jobs_pkey directly: no join with anything under it (the next
    # plan node; PostgreSQL 18 prints the Buffers line in between).
    below = next(line for line in lines[write + 1:] if line.startswith("->"))
    assert below.startswith("->  Index Scan using jobs_pkey on jobs"), plan
    # Every running job matched (PostgreSQL 18 prints rows=500.00).
    assert re.search(rf"rows={len(ids)}(\.0+)? loops=1", lines[write]), plan
