"""Transactional handlers against real Postgres: writes commit with the ack or not at all.

A task declared ``transactional=True`` gets ``ctx.conn`` (and SQLAlchemy
sessions over it); the worker runs the job's fenced ack in that transaction
and commits once. These tests count business rows against job outcomes.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql
from sqlalchemy import text

import jobqueue
from jobqueue import JobContext, JobQueue, Retry
from tests.helpers import count, wait_until, worker_thread

FAST = Retry(base=0.01, cap=0.05, jitter=False)


@pytest.fixture
def business(admin: psycopg.Connection[Any], app: JobQueue) -> Iterator[sql.Composed]:
    """A business table in the test schema: one row per write a handler made."""
    table = sql.Identifier(app.schema, "business")
    admin.execute(sql.SQL("CREATE TABLE {} (job_id bigint NOT NULL, attempt int NOT NULL, "
                          "note text)").format(table))
    yield sql.SQL("INSERT INTO {} (job_id, attempt, note) VALUES (%s, %s, %s)").format(table)


def rows(admin: psycopg.Connection[Any], schema: str) -> list[tuple[int, int, str | None]]:
    return [tuple(r) for r in admin.execute(sql.SQL(  # type: ignore[misc]
        "SELECT job_id, attempt, note FROM {} ORDER BY job_id, attempt").format(
        sql.Identifier(schema, "business"))).fetchall()]


def test_writes_roll_back_with_a_failed_attempt_and_commit_with_the_ack(
        app: JobQueue, admin: psycopg.Connection[Any], business: sql.Composed) -> None:
    @app.task(transactional=True, pass_context=True, max_attempts=3, retry=FAST)
    def pay(ctx: JobContext, order: int) -> str:
        ctx.conn.execute(business, (ctx.id, ctx.attempt, f"order {order}"))
        if ctx.attempt < 3:
            raise ConnectionError("the bank said try again")  # after writing: must roll back
        return "paid"

    @app.task(transactional=True, pass_context=True, max_attempts=1)
    async def refund(ctx: JobContext, order: int) -> str:
        await ctx.conn.execute(business, (ctx.id, ctx.attempt, f"refund {order}"))
        if order < 0:
            raise jobqueue.PermanentError("no such order")
        return "refunded"

    paid, refunded, bad = (app.enqueue(pay, {"order": 1}), app.enqueue(refund, {"order": 2}),
                           app.enqueue(refund, {"order": -1}))
    with worker_thread(app):
        assert app.result(paid, timeout=20) == "paid"
        assert app.result(refunded, timeout=20) == "refunded"
        with pytest.raises(jobqueue.JobFailed, match="permanent"):
            app.result(bad, timeout=20)
    # Only the attempts that succeeded left a row: attempt 3 of pay, refund's one.
    assert rows(admin, app.schema) == [(paid, 3, "order 1"), (refunded, 1, "refund 2")]
    assert app.job(paid).attempts == 3 and len(app.job(paid).errors) == 2


def test_a_rescued_attempt_cannot_commit_its_writes(
        app: JobQueue, admin: psycopg.Connection[Any], business: sql.Composed) -> None:
    inside = threading.Event()
    rescued = threading.Event()

    @app.task(transactional=True, pass_context=True, max_attempts=5)
    def once(ctx: JobContext) -> int:
        ctx.conn.execute(business, (ctx.id, ctx.attempt, None))
        if ctx.attempt == 1:
            inside.set()
            assert rescued.wait(20)  # the fleet takes the job away meanwhile
        return ctx.attempt

    job_id = app.enqueue(once)
    with worker_thread(app) as worker:
        assert inside.wait(20)
        # What the leader does to a worker it believes lost: the job goes back to
        # the queue, and (here, the same worker) claims it again as attempt 2.
        admin.execute(sql.SQL("UPDATE {} SET state = 'queued', locked_by = NULL, "
                              "locked_until = NULL WHERE id = %s").format(
            sql.Identifier(app.schema, "jobs")), (job_id,))
        wait_until(lambda: app.job(job_id).attempts == 2, message="the job to be claimed again")
        rescued.set()
        assert app.result(job_id, timeout=20) == 2
        wait_until(lambda: worker.state.counts["lease_lost"] == 1,
                   message="the stale attempt's ack to be refused")
    # Attempt 1 wrote and returned, but its ack was fenced off: rolled back.
    assert rows(admin, app.schema) == [(job_id, 2, None)]
    assert count(admin, app.schema, "job_history", "id = %s", (job_id,)) == 1


def test_one_failing_job_never_rolls_back_another_of_its_batch(
        app: JobQueue, admin: psycopg.Connection[Any], business: sql.Composed) -> None:
    @app.task(transactional=True, pass_context=True, max_attempts=1)
    def item(ctx: JobContext, n: int) -> int:
        ctx.conn.execute(business, (ctx.id, ctx.attempt, str(n)))
        if n % 2:
            raise ValueError(f"odd {n}")
        return n

    ids = app.enqueue_many([(item, {"n": n}) for n in range(20)])  # claimed together
    with worker_thread(app, concurrency=20, batch_size=20):
        wait_until(lambda: count(admin, app.schema, "jobs") == 0, 20, message="the batch")
    assert [r[2] for r in rows(admin, app.schema)] == [str(n) for n in range(0, 20, 2)]
    assert count(admin, app.schema, "dead_jobs") == 10
    assert {app.job(i).state for i in ids} == {"succeeded", "dead"}


def test_sqlalchemy_sessions_join_the_jobs_transaction(
        app: JobQueue, admin: psycopg.Connection[Any], business: sql.Composed) -> None:
    insert = text(f'INSERT INTO "{app.schema}".business (job_id, attempt, note) '
                  "VALUES (:job, :attempt, :note)")

    @app.task(transactional=True, pass_context=True, max_attempts=2, retry=FAST)
    def orm(ctx: JobContext) -> None:
        session = ctx.session()
        session.execute(insert, {"job": ctx.id, "attempt": ctx.attempt, "note": "orm"})
        session.commit()  # a savepoint: the job's transaction is still open
        if ctx.attempt == 1:
            raise RuntimeError("after the session's commit: still rolled back")

    @app.task(transactional=True, pass_context=True, max_attempts=1)
    async def orm_async(ctx: JobContext) -> None:
        session = await ctx.async_session()
        await session.execute(insert, {"job": ctx.id, "attempt": ctx.attempt, "note": "async"})
        await session.commit()

    a, b = app.enqueue(orm), app.enqueue(orm_async)
    with worker_thread(app):
        app.result(a, timeout=20)
        app.result(b, timeout=20)
    assert rows(admin, app.schema) == [(a, 2, "orm"), (b, 1, "async")]


def test_session_outside_a_transactional_task_is_a_clear_error() -> None:
    with pytest.raises(RuntimeError, match="transactional=True"):
        JobContext(1, "t", "q", 1, 1, "w").session()
