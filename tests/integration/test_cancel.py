"""Cancelling jobs with ``app.cancel``: queued, running async, running sync, without LISTEN.

A queued job is moved to ``dead_jobs`` with reason ``cancelled`` at once (and
only if the caller's transaction commits). A running job is flagged and its
worker told through NOTIFY: an async handler gets ``CancelledError``, a sync
handler with a timeout (in a child process) is killed, a sync handler in a
thread sees ``ctx.cancelled``; stopped jobs are dead with reason
``cancelled`` and are not retried. With the worker's LISTEN connection down,
the heartbeat still delivers the cancel.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from jobqueue import JobContext, JobQueue
from jobqueue.worker import listener as listener_module
from jobqueue.worker import worker as worker_module
from tests.helpers import count, wait_until, worker_thread

Conn = psycopg.Connection[Any]
LIMIT = 60.0  # the longest a handler here waits: a backstop, never reached when the test works


def dead_row(admin: Conn, schema: str, job_id: int) -> tuple[str, int, Any] | None:
    row = admin.execute(sql.SQL("SELECT reason, attempts, errors FROM {} WHERE id = %s")
                        .format(sql.Identifier(schema, "dead_jobs")), (job_id,)).fetchone()
    return None if row is None else (row[0], row[1], row[2])


class Seen:
    """What handlers report from the worker's threads and loop."""

    def __init__(self) -> None:
        self.events: list[tuple[int, str]] = []
        self.started = threading.Event()

    def add(self, job_id: int, what: str) -> None:
        self.events.append((job_id, what))
        if what == "started":
            self.started.set()

    def of(self, job_id: int) -> list[str]:
        return [what for jid, what in self.events if jid == job_id]


@pytest.fixture
def seen(app: JobQueue) -> Seen:
    seen = Seen()

    @app.task(pass_context=True)
    async def waits(ctx: JobContext) -> None:
        seen.add(ctx.id, "started")
        try:
            await asyncio.sleep(LIMIT)
        except asyncio.CancelledError:
            seen.add(ctx.id, "cancelled_error")
            raise
        seen.add(ctx.id, "finished")

    @app.task(pass_context=True)
    def cooperates(ctx: JobContext, stop_by: str = "raise") -> None:
        seen.add(ctx.id, "started")
        deadline = time.monotonic() + LIMIT
        while not ctx.cancelled and time.monotonic() < deadline:
            time.sleep(0.01)
        seen.add(ctx.id, "saw_cancel" if ctx.cancelled else "finished")
        if ctx.cancelled and stop_by == "raise":
            raise RuntimeError("stopping: cancelled")

    @app.task(timeout=LIMIT)
    def forked() -> None:
        time.sleep(LIMIT)  # in a child process: nothing here can report back

    return seen


def test_cancel_a_queued_job(app: JobQueue, seen: Seen, conn: Conn, admin: Conn) -> None:
    job_id = app.enqueue("waits", delay=3600)
    # Inside the caller's transaction: rolled back, nothing happened.
    assert app.cancel(job_id, conn=conn) == "cancelled"
    conn.rollback()
    assert count(admin, app.schema, "jobs", "id = %s", (job_id,)) == 1
    assert dead_row(admin, app.schema, job_id) is None

    assert app.cancel(job_id) == "cancelled"
    reason, attempts, errors = dead_row(admin, app.schema, job_id)  # type: ignore[misc]
    assert (reason, attempts) == ("cancelled", 0)
    assert [(e["type"], e["message"]) for e in errors] == [("Cancelled", "cancelled while queued")]
    assert count(admin, app.schema, "jobs") == 0
    assert app.cancel(job_id) == "not_found"
    assert app.cancel(10**12) == "not_found"


def test_cancel_a_running_async_job(app: JobQueue, seen: Seen, admin: Conn) -> None:
    with worker_thread(app) as worker:
        job_id = app.enqueue("waits")
        assert seen.started.wait(10)
        asked = time.monotonic()
        assert app.cancel(job_id) == "cancelling"
        wait_until(lambda: dead_row(admin, app.schema, job_id) is not None, 10,
                   message="the job to be cancelled")
        latency = time.monotonic() - asked
    assert seen.of(job_id) == ["started", "cancelled_error"]
    reason, attempts, errors = dead_row(admin, app.schema, job_id)  # type: ignore[misc]
    assert (reason, attempts, errors[-1]["type"]) == ("cancelled", 1, "Cancelled")
    assert count(admin, app.schema, "jobs") == 0
    assert worker.stats["dead"] == 1 and worker.stats["retried"] == 0
    assert latency < 5.0, f"cancel took {latency:.2f}s"


def test_cancel_a_sync_job_in_a_child_process(app: JobQueue, seen: Seen, admin: Conn) -> None:
    with worker_thread(app):
        job_id = app.enqueue("forked")
        wait_until(lambda: count(admin, app.schema, "jobs", "state = 'running'") == 1, 10,
                   message="the job to run")
        assert app.cancel(job_id) == "cancelling"
        wait_until(lambda: dead_row(admin, app.schema, job_id) is not None, 10,
                   message="the child to be killed")
    reason, attempts, _ = dead_row(admin, app.schema, job_id)  # type: ignore[misc]
    assert (reason, attempts) == ("cancelled", 1)
    assert count(admin, app.schema, "jobs") == 0


@pytest.mark.parametrize("stop_by", ["raise", "return"])
def test_cancel_a_sync_job_in_a_thread(stop_by: str, app: JobQueue, seen: Seen,
                                       admin: Conn) -> None:
    with worker_thread(app) as worker:
        job_id = app.enqueue("cooperates", {"stop_by": stop_by})
        assert seen.started.wait(10)
        assert app.cancel(job_id) == "cancelling"
        wait_until(lambda: count(admin, app.schema, "jobs") == 0, 10,
                   message="the job to stop")
    assert seen.of(job_id) == ["started", "saw_cancel"]
    assert worker.stats["retried"] == 0
    if stop_by == "raise":
        # Stopping by raising is the cancel taking effect, not a failure to retry.
        reason, attempts, errors = dead_row(admin, app.schema, job_id)  # type: ignore[misc]
        assert (reason, attempts) == ("cancelled", 1)
        assert errors[-1]["message"] == "stopping: cancelled"
    else:
        # A handler that returns normally did its work: it succeeded.
        assert dead_row(admin, app.schema, job_id) is None
        assert worker.stats["succeeded"] == 1


# -- without LISTEN -------------------------------------------------------------------------


@pytest.fixture
def deaf(monkeypatch: pytest.MonkeyPatch) -> None:
    """Workers started in this test get a listener aimed at a port where no server
    listens: their LISTEN connection never comes up, while everything else works."""
    base = listener_module.Listener

    class Deaf(base):  # type: ignore[misc, valid-type]
        def __init__(self, store: Any, *args: Any, **kwargs: Any) -> None:
            kwargs["listen_dsn"] = psycopg.conninfo.make_conninfo(store.dsn, host="127.0.0.1",
                                                                  port="1")
            super().__init__(store, *args, **kwargs)

    monkeypatch.setattr(worker_module, "Listener", Deaf)


@pytest.fixture
def quick_app(pg_dsn: str, migrated: str) -> Iterator[JobQueue]:
    # A short connect timeout: the worker waits that long for its listener.
    queue = JobQueue(pg_dsn, schema=migrated, connect_timeout=1.0)
    yield queue
    queue.close()


def test_heartbeat_delivers_the_cancel_when_listen_is_down(
        quick_app: JobQueue, deaf: None, admin: Conn) -> None:
    app = quick_app
    saw_cancel = threading.Event()

    @app.task(pass_context=True)
    def cooperates(ctx: JobContext) -> None:
        deadline = time.monotonic() + LIMIT
        while not ctx.cancelled and time.monotonic() < deadline:
            time.sleep(0.01)
        if ctx.cancelled:
            saw_cancel.set()
            raise RuntimeError("stopping: cancelled")

    with worker_thread(app, heartbeat_interval=0.5, lease=5.0) as worker:
        listener = worker.services["listener"]
        assert not listener.healthy  # type: ignore[attr-defined]
        job_id = app.enqueue("cooperates")
        wait_until(lambda: count(admin, app.schema, "jobs", "state = 'running'") == 1, 10,
                   message="the job to run")
        asked = time.monotonic()
        assert app.cancel(job_id) == "cancelling"  # its NOTIFY reaches nobody
        assert saw_cancel.wait(10), "the cancel never reached the handler"
        latency = time.monotonic() - asked
        wait_until(lambda: dead_row(admin, app.schema, job_id) is not None, 10,
                   message="the job to be dead")
        assert listener.notifications == 0  # type: ignore[attr-defined]
        assert not listener.healthy  # type: ignore[attr-defined]
    assert dead_row(admin, app.schema, job_id)[:2] == ("cancelled", 1)  # type: ignore[index]
    assert count(admin, app.schema, "jobs") == 0
    # Delivered by a heartbeat: within about one interval, not by a lease expiry.
    assert latency < 3.0, f"cancel took {latency:.2f}s"
