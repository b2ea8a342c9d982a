"""A worker app for the flow-control acceptance tests: every run is recorded with its times.

Run it as a user would: ``jobqueue worker --app tests.apps.flow_app:app``; the
DSN and schema come from ``JOBQUEUE_DSN``/``JOBQUEUE_SCHEMA``. Handlers append
``started``/``finished`` rows to ``<schema>.runs`` (:data:`RUNS_DDL`), stamped
with the database's clock, so a test can rebuild every run's interval and ask
how many overlapped, or in what order the queues were served. The table has
no unique constraint on purpose: a job that ran twice shows up twice.

A *gate* is a file path: a handler given one waits until the file exists, so a
test holds a job "running" exactly as long as it needs to.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from pathlib import Path
from typing import Any

from psycopg import sql
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from jobqueue import JobContext, JobQueue

RUNS_DDL = """
CREATE TABLE {}.runs (
    seq     bigint      GENERATED ALWAYS AS IDENTITY,
    job_id  bigint      NOT NULL,
    task    text        NOT NULL,
    queue   text        NOT NULL,
    phase   text        NOT NULL,
    pid     integer     NOT NULL,
    at      timestamptz NOT NULL DEFAULT clock_timestamp()
)
"""

# The longest a gated or cooperative handler waits: a backstop so that a test
# gone wrong cannot leave a worker process busy forever.
LIMIT = 120.0

app = JobQueue()  # DSN and schema from the environment (or the CLI's overrides)

_lock = threading.Lock()
_sync_pool: ConnectionPool[Any] | None = None
_async_pool: AsyncConnectionPool[Any] | None = None
_async_lock = asyncio.Lock()  # binds to the worker's loop on first use


def _insert() -> sql.Composed:
    # Read at call time: `jobqueue worker --schema` replaces app.settings after import.
    return sql.SQL("INSERT INTO {} (job_id, task, queue, phase, pid) VALUES (%s, %s, %s, %s, %s)"
                   ).format(sql.Identifier(app.schema, "runs"))


def _row(ctx: JobContext, phase: str) -> tuple[int, str, str, str, int]:
    return (ctx.id, ctx.task, ctx.queue, phase, os.getpid())


async def record(ctx: JobContext, phase: str) -> None:
    global _async_pool
    async with _async_lock:  # jobs starting together must share one pool
        if _async_pool is None:
            pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
                app.dsn, min_size=1, max_size=4, kwargs={"autocommit": True}, open=False,
                name="flow-app-async")
            await pool.open()
            _async_pool = pool
    async with _async_pool.connection() as conn:
        await conn.execute(_insert(), _row(ctx, phase))


def record_sync(ctx: JobContext, phase: str) -> None:
    global _sync_pool
    with _lock:
        if _sync_pool is None:
            _sync_pool = ConnectionPool(app.dsn, min_size=1, max_size=2,
                                        kwargs={"autocommit": True}, name="flow-app-sync")
    with _sync_pool.connection() as conn:
        conn.execute(_insert(), _row(ctx, phase))


@app.task(pass_context=True)
async def work(ctx: JobContext, seconds: float = 0.0, gate: str | None = None) -> None:
    """``started``; wait for ``gate`` (if any); ``seconds`` of work; ``finished``."""
    await record(ctx, "started")
    if gate is not None:
        deadline = time.monotonic() + LIMIT
        while not Path(gate).exists() and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
    await asyncio.sleep(seconds)
    await record(ctx, "finished")


@app.task(pass_context=True)
def cooperative(ctx: JobContext) -> None:
    """A sync handler (a pool thread) that works until ``ctx.cancelled`` says stop.

    It records ``cancel_seen`` and stops by raising, as a handler that cannot
    finish its work would.
    """
    record_sync(ctx, "started")
    deadline = time.monotonic() + LIMIT
    while not ctx.cancelled and time.monotonic() < deadline:
        time.sleep(0.01)
    if ctx.cancelled:
        record_sync(ctx, "cancel_seen")
        raise RuntimeError("stopped: the job was cancelled")
    record_sync(ctx, "finished")
