"""Correlation ids at enqueue: stored with the job, checked before any SQL, inherited.

A producer passes ``correlation_id=`` (say, its request id); it is stored in
``jobs.correlation_id`` and the worker binds it into the job's log context. A
bad one is refused before the INSERT, so the caller's transaction survives.
A job enqueued by a handler inherits the correlation id of the job running it.
"""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
import pytest
from psycopg import sql

from jobqueue import JobQueue, PayloadError, PermanentError
from tests.helpers import wait_until, worker_thread


def correlation(admin: psycopg.Connection[Any], schema: str, job_id: int) -> str | None:
    row = admin.execute(sql.SQL("SELECT correlation_id FROM {} WHERE id = %s").format(
        sql.Identifier(schema, "jobs")), (job_id,)).fetchone()
    assert row is not None, f"job {job_id} not in jobs"
    return row[0]  # type: ignore[no-any-return]


def test_every_enqueue_path_stores_the_correlation_id(app: JobQueue, pg_dsn: str,
                                                      admin: psycopg.Connection[Any]) -> None:
    one = app.enqueue("t", {}, strict=False, correlation_id="req-1")
    none = app.enqueue("t", {}, strict=False)
    many = app.enqueue_many([("t", {"n": i}) for i in range(3)], strict=False,
                            correlation_id="req-bulk")
    with psycopg.connect(pg_dsn) as conn:
        mine = app.enqueue("t", {}, conn=conn, strict=False, correlation_id="req-tx")

    async def produce() -> int:
        async with await psycopg.AsyncConnection.connect(pg_dsn) as aconn:
            return await app.enqueue_async("t", {}, conn=aconn, strict=False,
                                           correlation_id="req-async")

    later = asyncio.run(produce())
    assert correlation(admin, app.schema, one) == "req-1"
    assert correlation(admin, app.schema, none) is None
    assert [correlation(admin, app.schema, i) for i in many] == ["req-bulk"] * 3
    assert correlation(admin, app.schema, mine) == "req-tx"
    assert correlation(admin, app.schema, later) == "req-async"


def test_a_bad_correlation_id_leaves_the_callers_transaction_usable(
        app: JobQueue, pg_dsn: str, admin: psycopg.Connection[Any]) -> None:
    admin.execute(sql.SQL("CREATE TABLE {} (n int)").format(sql.Identifier(app.schema, "biz")))
    with psycopg.connect(pg_dsn) as conn:
        conn.execute(sql.SQL("INSERT INTO {} VALUES (1)").format(
            sql.Identifier(app.schema, "biz")))
        for bad in ("x" * 256, "nul\x00inside"):
            with pytest.raises(PayloadError):
                app.enqueue("t", {}, conn=conn, strict=False, correlation_id=bad)
        job_id = app.enqueue("t", {}, conn=conn, strict=False, correlation_id="req-ok")
    # Committed: the business row and the good job, nothing else.
    assert admin.execute(sql.SQL("SELECT count(*) FROM {}").format(
        sql.Identifier(app.schema, "biz"))).fetchone() == (1,)
    assert admin.execute(sql.SQL("SELECT array_agg(id) FROM {}").format(
        sql.Identifier(app.schema, "jobs"))).fetchone() == ([job_id],)


def test_a_job_enqueued_by_a_handler_inherits_the_correlation_id(
        app: JobQueue, admin: psycopg.Connection[Any]) -> None:
    children: list[int] = []

    # The children go to a queue nobody serves, so their rows stay to be read.
    @app.task()
    async def parent_async() -> None:
        async with await psycopg.AsyncConnection.connect(app.dsn) as conn:
            children.append(await app.enqueue_async("child", {}, conn=conn, strict=False,
                                                    queue="kids"))

    @app.task()
    def parent_sync() -> None:
        children.append(app.enqueue("child", {}, strict=False, queue="kids"))

    @app.task()
    def parent_override() -> None:
        children.append(app.enqueue("child", {}, strict=False, queue="kids",
                                    correlation_id="req-own"))

    app.enqueue("parent_async", correlation_id="req-a")
    app.enqueue("parent_sync", correlation_id="req-s")
    app.enqueue("parent_override", correlation_id="req-o")
    app.enqueue("parent_sync")  # no correlation id: none to inherit
    with worker_thread(app, queues=("default",)):
        wait_until(lambda: len(children) == 4, 20, message="parents to enqueue")
    got = sorted((correlation(admin, app.schema, c) or "-") for c in children)
    assert got == ["-", "req-a", "req-own", "req-s"]


def test_a_dead_job_keeps_its_correlation_id(app: JobQueue,
                                             admin: psycopg.Connection[Any]) -> None:
    @app.task(max_attempts=1)
    def doomed() -> None:
        raise PermanentError("no")

    job_id = app.enqueue("doomed", correlation_id="req-dead")
    app.run_worker(burst=True, handle_signals=False)
    row = admin.execute(sql.SQL("SELECT correlation_id FROM {} WHERE id = %s").format(
        sql.Identifier(app.schema, "dead_jobs")), (job_id,)).fetchone()
    assert row == ("req-dead",)
