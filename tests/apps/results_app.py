"""A worker app whose jobs return results, report progress and fail: for the CLI tests
of ``job show``, ``history list`` and ``stats``."""

from __future__ import annotations

import time
from pathlib import Path

from jobqueue import JobContext, JobQueue, PermanentError

app = JobQueue()  # DSN and schema from the environment


@app.task
def answer(n: int) -> dict[str, int]:
    return {"doubled": n * 2}


@app.task(max_attempts=1)
def refuse(why: str) -> None:
    raise PermanentError(why)


@app.task(pass_context=True)
def progressing(ctx: JobContext, gate: str) -> str:
    """Report 3 of 10 steps, then wait for the file ``gate``."""
    ctx.progress(3, 10, "resizing")
    deadline = time.monotonic() + 60
    while not Path(gate).exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    ctx.progress(10, 10, "done")
    return "resized"
