"""A worker app for the fault-injection tests: handlers that fail, crash, block and record.

Worker subprocesses load it as a user would: ``jobqueue worker --app
tests.apps.faulty:app``, with the DSN and schema from ``$JOBQUEUE_DSN`` and
``$JOBQUEUE_SCHEMA`` (the CLI maps them to ``--dsn``/``--schema``).

A successful run appends ``(job id, task, 'done', attempt, pid)`` to
``<schema>.effects`` (the table of ``tests.apps.recorder.EFFECTS_DDL``, which has
no unique constraint on purpose: a job that ran twice shows up twice). The
row is committed before the handler returns, so "the handler succeeded" and
"the side effect exists" are the same fact, and the tests can count both.
"""

from __future__ import annotations

import asyncio
import os
import random
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from jobqueue import JobContext, JobQueue, Retry

app = JobQueue()  # DSN and schema from the environment (or the CLI's overrides)

# Short backoff: the tests want many retries in a few seconds, not realistic pacing.
FAST_RETRY = Retry(base=0.05, cap=0.5)
# A backstop for gated handlers, so a test gone wrong cannot leave a worker waiting forever.
GATE_LIMIT = 120.0

_local = threading.local()


class FlakyError(RuntimeError):
    """The failure a flaky handler raises on purpose."""


def _connection() -> psycopg.Connection[Any]:
    # One connection per handler thread, opened with a short timeout: while the
    # database restarts, a handler should fail fast (and be retried), not sit
    # in a pool queue holding its job's lease.
    conn: psycopg.Connection[Any] | None = getattr(_local, "conn", None)
    if conn is None or conn.closed or conn.broken:
        conn = psycopg.connect(app.dsn, autocommit=True, connect_timeout=2)
        _local.conn = conn
    return conn


def record(ctx: JobContext) -> None:
    """Commit this attempt's side effect; raises (so the attempt fails) if it cannot."""
    query = sql.SQL(
        "INSERT INTO {} (job_id, task, phase, attempt, pid) VALUES (%s, %s, 'done', %s, %s)"
    ).format(sql.Identifier(app.schema, "effects"))
    try:
        _connection().execute(query, (ctx.id, ctx.task, ctx.attempt, os.getpid()))
    except psycopg.Error:
        conn = getattr(_local, "conn", None)
        _local.conn = None
        if conn is not None:
            conn.close()
        raise


@app.task(pass_context=True, max_attempts=5, retry=FAST_RETRY)
def flaky(ctx: JobContext, fail_rate: float, work: float) -> None:
    """Work up to ``work`` seconds, then fail with probability ``fail_rate`` or record."""
    time.sleep(random.uniform(0.0, work))
    if random.random() < fail_rate:
        raise FlakyError(f"job {ctx.id} failed on purpose (attempt {ctx.attempt})")
    record(ctx)


@app.task(pass_context=True, max_attempts=3)
def poison(ctx: JobContext) -> None:
    """Kill the whole worker process, as a segfaulting C extension would."""
    os._exit(1)


@app.task(pass_context=True, max_attempts=10, retry=FAST_RETRY)
def steady(ctx: JobContext, work: float = 0.0) -> None:
    """Sleep ``work`` seconds, then record. Enough attempts to outlive a few crashes."""
    time.sleep(work)
    record(ctx)


@app.task(pass_context=True, max_attempts=5, retry=FAST_RETRY)
def gated(ctx: JobContext, gate: str) -> None:
    """Wait until the file ``gate`` exists, then record: the test decides when jobs finish."""
    deadline = time.monotonic() + GATE_LIMIT
    while not Path(gate).exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"gate {gate} never opened")
        time.sleep(0.02)
    record(ctx)


@app.task(pass_context=True, transactional=True, max_attempts=25, retry=FAST_RETRY)
def tx_effect(ctx: JobContext, fail_rate: float = 0.0, work: float = 0.0) -> int:
    """Write this attempt's effect *in the job's transaction*, work up to ``work``
    seconds, then fail with probability ``fail_rate``: a failed attempt's row must
    roll back with it, a successful one commit with the ack (exactly once)."""
    ctx.conn.execute(sql.SQL(
        "INSERT INTO {} (job_id, task, phase, attempt, pid) VALUES (%s, %s, 'done', %s, %s)"
    ).format(sql.Identifier(app.schema, "effects")), (ctx.id, ctx.task, ctx.attempt, os.getpid()))
    time.sleep(random.uniform(0.0, work))
    if random.random() < fail_rate:
        raise FlakyError(f"job {ctx.id} failed on purpose (attempt {ctx.attempt})")
    return ctx.attempt


@app.task(pass_context=True, transactional=True, max_attempts=25, retry=FAST_RETRY)
async def tx_effect_async(ctx: JobContext, fail_rate: float = 0.0, work: float = 0.0) -> int:
    """:func:`tx_effect` for an async handler (``ctx.conn`` is an AsyncConnection)."""
    await ctx.conn.execute(sql.SQL(
        "INSERT INTO {} (job_id, task, phase, attempt, pid) VALUES (%s, %s, 'done', %s, %s)"
    ).format(sql.Identifier(app.schema, "effects")), (ctx.id, ctx.task, ctx.attempt, os.getpid()))
    await asyncio.sleep(random.uniform(0.0, work))
    if random.random() < fail_rate:
        raise FlakyError(f"job {ctx.id} failed on purpose (attempt {ctx.attempt})")
    return ctx.attempt


@app.task(pass_context=True, max_attempts=25, retry=FAST_RETRY)
def member(ctx: JobContext, i: int, fail_rate: float = 0.0, work: float = 0.0) -> int:
    """A chord member: work, fail transiently with probability ``fail_rate``, return ``i``."""
    time.sleep(random.uniform(0.0, work))
    if random.random() < fail_rate:
        raise FlakyError(f"member {ctx.id} failed on purpose (attempt {ctx.attempt})")
    return i


@app.task(pass_context=True, transactional=True, max_attempts=25, retry=FAST_RETRY)
def collect(ctx: JobContext) -> int:
    """A chord's callback: records the results it received, in the job's transaction
    (so a run killed before its commit leaves no row, and a row means it ran once)."""
    ctx.conn.execute(sql.SQL("INSERT INTO {} (job_id, results, pid) VALUES (%s, %s, %s)").format(
        sql.Identifier(app.schema, "chord_runs")),
        (ctx.id, psycopg.types.json.Jsonb(ctx.parent_results), os.getpid()))
    return len(ctx.parent_results)
