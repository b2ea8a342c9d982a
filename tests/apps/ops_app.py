"""A worker app for the operations tests (logs, metrics, LISTEN health).

Run it as a user would: ``jobqueue worker --app tests.apps.ops_app:app``; the
DSN and schema come from ``JOBQUEUE_DSN``/``JOBQUEUE_SCHEMA``. Every handler
writes its own structlog line (``ops.handled``), which must carry the job's id
and correlation id without the handler passing them: that is what the
lifecycle binding promises. ``chain`` enqueues a follow-up job from inside a
handler, which inherits the correlation id.
"""

from __future__ import annotations

import asyncio
import time

import structlog

from jobqueue import JobContext, JobQueue, PermanentError

app = JobQueue()  # DSN and schema from the environment (or the CLI's overrides)

log = structlog.get_logger("ops_app")


@app.task()
async def quick(n: int) -> None:
    log.info("ops.handled", n=n, kind="async")


@app.task()
def quick_sync(n: int) -> None:
    log.info("ops.handled", n=n, kind="sync")


@app.task(timeout=60)
def quick_forked(n: int) -> None:
    """Sync with a timeout: runs in a forked child process."""
    log.info("ops.handled", n=n, kind="forked")


@app.task()
async def slow(seconds: float) -> None:
    await asyncio.sleep(seconds)


@app.task()
def slow_sync(seconds: float) -> None:
    time.sleep(seconds)


@app.task(max_attempts=1)
def broken(n: int) -> None:
    raise PermanentError(f"job {n} cannot succeed")


@app.task(pass_context=True)
def chain(ctx: JobContext, n: int) -> None:
    """Enqueue ``quick`` from inside a handler (its correlation id is inherited)."""
    log.info("ops.handled", n=n, kind="chain")
    app.enqueue("quick", {"n": n + 1000})
