"""A worker app for acceptance tests: every handler writes its side effects to a table.

Run it as a user would: ``jobqueue worker --app tests.apps.recorder:app``. The
DSN and schema come from the environment (``JOBQUEUE_DSN``/``JOBQUEUE_SCHEMA``,
or ``--dsn``/``--schema``, which override them). Handlers append rows to
``<schema>.effects`` (see :data:`EFFECTS_DDL`), which has no unique constraint
on purpose: a job that ran twice shows up as two rows.

A *gate* is a file path: a handler given one waits until the file exists, so
a test can hold jobs "running" for exactly as long as it needs, without
guessing durations.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from jobqueue import JobContext, JobQueue

EFFECTS_DDL = """
CREATE TABLE {}.effects (
    job_id   bigint      NOT NULL,
    task     text        NOT NULL,
    phase    text        NOT NULL,
    attempt  integer     NOT NULL,
    pid      integer     NOT NULL,
    at       timestamptz NOT NULL DEFAULT clock_timestamp()
)
"""

# How long a gated handler waits at most: a backstop so that a test gone wrong
# cannot leave a worker process polling forever.
GATE_LIMIT = 120.0

app = JobQueue()  # DSN and schema from the environment (or the CLI's overrides)

# The handlers' own connections. Never prepared: the app also runs behind
# PgBouncer in transaction mode (tests/acceptance/test_pgbouncer.py).
CONNECT: dict[str, Any] = {"autocommit": True, "prepare_threshold": None}

_lock = threading.Lock()
_sync_pool: ConnectionPool[Any] | None = None
_async_pool: AsyncConnectionPool[Any] | None = None
_async_lock = asyncio.Lock()  # binds to the worker's loop on first use


def _insert() -> sql.Composed:
    # app.settings is read at call time: `jobqueue worker --schema` replaces it after import.
    return sql.SQL(
        "INSERT INTO {} (job_id, task, phase, attempt, pid) VALUES (%s, %s, %s, %s, %s)"
    ).format(sql.Identifier(app.schema, "effects"))


def _row(ctx: JobContext, phase: str) -> tuple[int, str, str, int, int]:
    return (ctx.id, ctx.task, phase, ctx.attempt, os.getpid())


def record_sync(ctx: JobContext, phase: str) -> None:
    global _sync_pool
    with _lock:
        if _sync_pool is None:
            _sync_pool = ConnectionPool(app.dsn, min_size=1, max_size=4,
                                        kwargs=CONNECT, name="recorder-sync")
    with _sync_pool.connection() as conn:
        conn.execute(_insert(), _row(ctx, phase))


async def record_async(ctx: JobContext, phase: str) -> None:
    global _async_pool
    async with _async_lock:  # twenty jobs starting at once must share one pool
        if _async_pool is None:
            pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
                app.dsn, min_size=1, max_size=4, kwargs=CONNECT, open=False,
                name="recorder-async")
            await pool.open()
            _async_pool = pool
    async with _async_pool.connection() as conn:
        await conn.execute(_insert(), _row(ctx, phase))


@app.task(pass_context=True)
async def record(ctx: JobContext, n: int) -> None:
    """A quick job whose only effect is one ``done`` row."""
    await record_async(ctx, "done")


@app.task(pass_context=True)
async def slow(ctx: JobContext, seconds: float, gate: str | None = None) -> None:
    """``started``; wait for ``gate`` (if any); sleep ``seconds``; ``finished``."""
    await record_async(ctx, "started")
    if gate is not None:
        deadline = time.monotonic() + GATE_LIMIT
        while not Path(gate).exists() and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
    await asyncio.sleep(seconds)
    await record_async(ctx, "finished")


@app.task(pass_context=True)
def slow_sync(ctx: JobContext, seconds: float, gate: str | None = None) -> None:
    """:func:`slow` as a sync handler (runs in the worker's thread pool)."""
    record_sync(ctx, "started")
    if gate is not None:
        deadline = time.monotonic() + GATE_LIMIT
        while not Path(gate).exists() and time.monotonic() < deadline:
            time.sleep(0.02)
    time.sleep(seconds)
    record_sync(ctx, "finished")


def record_fresh(ctx: JobContext, phase: str) -> None:
    """Record on a connection of our own: safe in a forked child, unlike a pool."""
    with psycopg.connect(app.dsn, **CONNECT) as conn:
        conn.execute(_insert(), _row(ctx, phase))


@app.task(pass_context=True, timeout=300)
def slow_forked(ctx: JobContext, seconds: float, gate: str | None = None) -> None:
    """:func:`slow_sync` with a timeout, so the worker runs it in a killable child process."""
    record_fresh(ctx, "started")
    if gate is not None:
        deadline = time.monotonic() + GATE_LIMIT
        while not Path(gate).exists() and time.monotonic() < deadline:
            time.sleep(0.02)
    time.sleep(seconds)
    record_fresh(ctx, "finished")


# For `--app tests.apps.recorder:not_a_queue`: importable, but not a JobQueue.
not_a_queue = {"this": "is a dict"}
