"""A worker app for the process model's tests: CPU-bound, crashing, leaking handlers.

Handlers of ``executor="process"`` tasks run in the worker's child processes,
so they open a connection of their own per call (a connection inherited across
a fork is never shared) and record each run, with the pid that ran it, in
``<schema>.effects`` (tests/apps/recorder.py's table): a job that ran twice
shows up as two rows.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from jobqueue import JobContext, JobQueue, Retry

app = JobQueue()  # DSN and schema from the environment

#: What the leaking handlers keep, on purpose.
_leaked: list[bytearray] = []


def record(ctx_or_id: JobContext | int, task: str, phase: str, attempt: int = 1) -> None:
    job_id = ctx_or_id.id if isinstance(ctx_or_id, JobContext) else ctx_or_id
    with psycopg.connect(app.dsn, autocommit=True, prepare_threshold=None) as conn:
        conn.execute(sql.SQL("INSERT INTO {} (job_id, task, phase, attempt, pid) "
                             "VALUES (%s, %s, %s, %s, %s)")
                     .format(sql.Identifier(app.schema, "effects")),
                     (job_id, task, phase, attempt, os.getpid()))


def burn(seconds: float) -> int:
    """Pure-Python CPU work for about ``seconds`` of this thread's CPU time (the GIL
    held throughout)."""
    end, n = time.thread_time() + seconds, 0
    while time.thread_time() < end:
        for i in range(10_000):
            n += i * i % 7
    return n


@app.task(executor="process", queue="cpu", pass_context=True)
def crunch(ctx: JobContext, seconds: float) -> int:
    value = burn(seconds)
    record(ctx, "crunch", "done", ctx.attempt)
    return value % 1000


@app.task(queue="cpu_threads", pass_context=True)
def crunch_thread(ctx: JobContext, seconds: float) -> int:
    value = burn(seconds)
    record(ctx, "crunch_thread", "done", ctx.attempt)
    return value % 1000


@app.task(executor="process", queue="proc", pass_context=True, max_attempts=2,
          retry=Retry(base=0, jitter=False))
def crash(ctx: JobContext, how: str) -> None:
    """Dies on its first attempt the way ``how`` says; succeeds on the next."""
    record(ctx, "crash", "started", ctx.attempt)
    if ctx.attempt == 1:
        if how == "exit":
            os._exit(3)
        os.kill(os.getpid(), getattr(signal, how))
    record(ctx, "crash", "done", ctx.attempt)


@app.task(executor="process", queue="proc", pass_context=True, max_attempts=1)
def always_crash(ctx: JobContext) -> None:
    record(ctx, "always_crash", "started", ctx.attempt)
    os.kill(os.getpid(), signal.SIGKILL)


@app.task(executor="process", queue="proc", pass_context=True, timeout=1.0, max_attempts=1)
def too_slow(ctx: JobContext, seconds: float) -> None:
    record(ctx, "too_slow", "started", ctx.attempt)
    time.sleep(seconds)
    record(ctx, "too_slow", "done", ctx.attempt)  # never: killed at 1 s


@app.task(executor="process", queue="proc", pass_context=True)
def gated(ctx: JobContext, gate: str) -> str:
    record(ctx, "gated", "started", ctx.attempt)
    deadline = time.monotonic() + 120
    while not Path(gate).exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    ctx.progress(1, 1, "through the gate")
    record(ctx, "gated", "done", ctx.attempt)
    return f"pid {os.getpid()}"


@app.task(executor="process", queue="proc", pass_context=True)
def fails(ctx: JobContext) -> None:
    raise ValueError(f"bad input in job {ctx.id}")


@app.task(executor="process", queue="proc", pass_context=True)
async def async_in_process(ctx: JobContext, x: int) -> dict[str, Any]:
    record(ctx, "async_in_process", "done", ctx.attempt)
    return {"double": 2 * x, "pid": os.getpid()}


def _leak(ctx: JobContext, task: str, mb: int, seconds: float) -> int:
    _leaked.append(bytearray(os.urandom(1024)) * (mb * 1024))  # touched: resident
    time.sleep(seconds)
    record(ctx, task, "done", ctx.attempt)
    return os.getpid()


@app.task(executor="process", queue="leaky", pass_context=True)
def leak_in_child(ctx: JobContext, mb: int, seconds: float = 0.0) -> int:
    return _leak(ctx, "leak_in_child", mb, seconds)


@app.task(queue="leaky_worker", pass_context=True)
def leak_in_worker(ctx: JobContext, mb: int, seconds: float = 0.0) -> int:
    return _leak(ctx, "leak_in_worker", mb, seconds)


@app.task(executor="process", queue="proc", pass_context=True)
def progress_storm(ctx: JobContext, n: int) -> int:
    """Reports progress in a tight loop: the pipe must not carry every call."""
    for i in range(1, n + 1):
        ctx.progress(i, n, f"step {i}")
    return n
