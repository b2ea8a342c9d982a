"""enqueue_many of many jobs goes through COPY and keeps every promise of the INSERT path.

From ``COPY_THRESHOLD`` jobs on, the rows travel as one COPY stream after their
ids are drawn. The contract does not change: ids in input order, every value
stored exactly (COPY's text format must escape tabs, newlines and
backslashes), the jobs exist iff the caller commits, one NOTIFY per distinct
ready queue and only at commit, an autocommit connection gets a transaction
of its own, and a bad job is refused before anything is sent. The libpq
trace shows which path a call took.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import tempfile
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import psycopg
import pytest
from psycopg import pq, sql

from jobqueue import JobQueue, PayloadError
from jobqueue.db import jobs
from jobqueue.protocol import job_channel
from tests.helpers import count

Conn = psycopg.Connection[Any]
N = jobs.COPY_THRESHOLD
# Characters COPY's text format gives a meaning to, in every column that takes text.
AWKWARD = "tab\there, newline\nhere, CR\rhere, backslash\\here, \\N, \\t, é, \u2028"


@contextlib.contextmanager
def frontend_messages(conn: Any) -> Iterator[list[str]]:
    """The message types this connection sent while inside the block."""
    sent: list[str] = []
    with tempfile.TemporaryFile() as f:
        conn.pgconn.trace(f.fileno())
        conn.pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS | pq.Trace.REGRESS_MODE)
        try:
            yield sent
        finally:
            conn.pgconn.untrace()
            f.seek(0)
            text = f.read().decode("utf-8", "replace")
            sent.extend(re.findall(r"^F\t\d+\t(\w+)", text, re.MULTILINE))


def stored(conn: Conn, schema: str, ids: list[int]) -> dict[int, tuple[Any, ...]]:
    rows = conn.execute(sql.SQL(
        "SELECT id, task, queue, args, priority, max_attempts, run_at, correlation_id, "
        "lock_key, state, attempts FROM {} WHERE id = ANY(%s)").format(
            sql.Identifier(schema, "jobs")), (ids,)).fetchall()
    return {r[0]: r[1:] for r in rows}


def listen(pg_dsn: str, app: JobQueue) -> psycopg.Connection[Any]:
    listener = psycopg.connect(pg_dsn, autocommit=True)
    listener.execute(sql.SQL("LISTEN {}").format(sql.Identifier(job_channel(app.schema))))
    return listener


def batch(n: int, task: str = "copy_task") -> list[tuple[str, dict[str, Any]]]:
    return [(task, {"i": i, "text": AWKWARD if i % 10 == 0 else "plain"}) for i in range(n)]


def test_below_the_threshold_one_insert_from_it_on_copy(app: JobQueue, conn: Conn) -> None:
    app.enqueue("copy_task", strict=False, conn=conn)  # the schema probe, once per app
    with frontend_messages(conn) as small:
        app.enqueue_many(batch(N - 1), strict=False, conn=conn)
    with frontend_messages(conn) as large:
        app.enqueue_many(batch(N), strict=False, conn=conn)
    assert "CopyData" not in small and small.count("Sync") == 1
    assert large.count("CopyDone") == 1 and large.count("CopyData") >= 1
    conn.commit()


def test_ids_come_back_in_input_order_and_every_value_is_stored_exactly(
        app: JobQueue, conn: Conn) -> None:
    @app.task(name="tab\tand\\backslash", queue="q\\with\ttab")
    def awkward_task(i: int, text: str) -> None: ...

    jobs = [("tab\tand\\backslash" if i % 2 else "copy_task",
             {"i": i, "text": AWKWARD, "nested": {"list": [i, None, True, 1.5]}})
            for i in range(N + 7)]
    ids = app.enqueue_many(jobs, strict=False, conn=conn, correlation_id=AWKWARD,
                           lock=f"lock {AWKWARD}", priority=-7, max_attempts=3)
    conn.commit()

    assert len(ids) == len(jobs) == len(set(ids))
    assert ids == sorted(ids)
    rows = stored(conn, app.schema, ids)
    assert len(rows) == len(jobs)
    for job_id, (task, args) in zip(ids, jobs, strict=True):
        got_task, queue, got_args, priority, attempts, _, correlation, lock, state, tries = \
            rows[job_id]
        assert (got_task, got_args) == (task, args)
        assert queue == ("q\\with\ttab" if task != "copy_task" else "default")
        assert (priority, attempts, correlation, lock) == (-7, 3, AWKWARD, f"lock {AWKWARD}")
        assert (state, tries) == ("queued", 0)


def test_rollback_leaves_nothing_and_notifies_nobody(
        app: JobQueue, conn: Conn, admin: Conn, pg_dsn: str) -> None:
    with listen(pg_dsn, app) as listener:
        ids = app.enqueue_many(batch(N), strict=False, conn=conn)
        assert conn.info.transaction_status == pq.TransactionStatus.INTRANS
        assert count(admin, app.schema, "jobs") == 0  # not visible before commit
        conn.rollback()
        assert count(admin, app.schema, "jobs") == 0
        assert stored(admin, app.schema, ids) == {}
        # A NOTIFY to compare with: the listener does hear what is sent.
        admin.execute("SELECT pg_notify(%s, 'probe')", (job_channel(app.schema),))
        heard = [n.payload for n in listener.notifies(timeout=2, stop_after=1)]
    assert heard == ["probe"]


def test_one_notify_per_ready_queue_at_commit_none_for_scheduled_jobs(
        app: JobQueue, conn: Conn, pg_dsn: str) -> None:
    with listen(pg_dsn, app) as listener:
        app.enqueue_many(batch(N), strict=False, conn=conn, queue="alpha")
        app.enqueue_many(batch(N), strict=False, conn=conn, queue="beta")
        app.enqueue_many(batch(N), strict=False, conn=conn, queue="later", delay=3600)
        assert list(listener.notifies(timeout=0.3)) == []  # nothing before COMMIT
        conn.commit()
        heard = sorted(n.payload for n in listener.notifies(timeout=1))
    assert heard == ["alpha", "beta"]


def test_delay_and_run_at_are_the_same_as_on_the_insert_path(app: JobQueue, conn: Conn) -> None:
    when = datetime(2031, 5, 6, 7, 8, 9, 123456, tzinfo=timezone(timedelta(hours=-3)))
    at = app.enqueue_many(batch(N), strict=False, conn=conn, run_at=when)
    later = app.enqueue_many(batch(N), strict=False, conn=conn, delay=90)
    now = conn.execute("SELECT now()").fetchone()
    assert now is not None
    conn.commit()
    assert {row[5] for row in stored(conn, app.schema, at).values()} == {when}
    assert {row[5] for row in stored(conn, app.schema, later).values()} == \
        {now[0] + timedelta(seconds=90)}


def test_autocommit_connection_gets_a_transaction_and_is_left_idle(
        app: JobQueue, pg_dsn: str, admin: Conn) -> None:
    with listen(pg_dsn, app) as listener, psycopg.connect(pg_dsn, autocommit=True) as auto:
        ids = app.enqueue_many(batch(N), strict=False, conn=auto)
        assert auto.info.transaction_status == pq.TransactionStatus.IDLE
        # Committed already: another session sees every row, and the NOTIFY came.
        assert len(stored(admin, app.schema, ids)) == N
        heard = [n.payload for n in listener.notifies(timeout=2, stop_after=1)]
    assert heard == ["default"]


def test_without_conn_jobqueue_commits_the_copy_itself(app: JobQueue, admin: Conn) -> None:
    ids = app.enqueue_many(batch(N), strict=False)
    assert len(stored(admin, app.schema, ids)) == N


def test_a_bad_job_among_many_is_refused_before_anything_is_sent(
        app: JobQueue, conn: Conn, admin: Conn) -> None:
    app.enqueue("copy_task", strict=False, conn=conn)  # the schema probe, once per app
    jobs: list[tuple[str, Any]] = batch(N + 10)
    jobs[N + 5] = ("copy_task", {"bad": object()})
    with frontend_messages(conn) as sent, pytest.raises(PayloadError):
        app.enqueue_many(jobs, strict=False, conn=conn)
    assert sent == []
    # The caller's transaction is intact and goes on.
    ids = app.enqueue_many(batch(N), strict=False, conn=conn)
    conn.commit()
    assert count(admin, app.schema, "jobs") == 1 + len(ids)


def test_async_connection_in_a_transaction_and_in_autocommit(
        app: JobQueue, pg_dsn: str, admin: Conn) -> None:
    async def main() -> tuple[list[int], list[int]]:
        async with await psycopg.AsyncConnection.connect(pg_dsn) as aconn:
            rolled_back = await app.enqueue_many_async(batch(N), strict=False, conn=aconn)
            assert count(admin, app.schema, "jobs") == 0
            await aconn.rollback()
            assert stored(admin, app.schema, rolled_back) == {}
            with frontend_messages(aconn) as sent:
                kept = await app.enqueue_many_async(batch(N + 1), strict=False, conn=aconn)
            assert sent.count("CopyDone") == 1
            await aconn.commit()
        async with await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as auto:
            more = await app.enqueue_many_async(batch(N), strict=False, conn=auto)
            assert auto.info.transaction_status == pq.TransactionStatus.IDLE
        return kept, more

    kept, more = asyncio.run(main())
    assert kept == sorted(kept) and len(set(kept)) == N + 1
    rows = stored(admin, app.schema, kept + more)
    assert len(rows) == 2 * N + 1
    assert [rows[i][2]["i"] for i in kept] == list(range(N + 1))
