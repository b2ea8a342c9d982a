"""Release N of an app, for the rolling-deploy test: ``notify`` takes ``{"email": ...}``.

It declares no version (version 1). Its handler records what it was called
with in ``<schema>.effects`` (tests/apps/recorder.py's table), task
``notify@1``, with the email in the phase column.
"""

from __future__ import annotations

from jobqueue import JobContext, JobQueue
from tests.apps.process_app import record

app = JobQueue()


@app.task(queue="deploy", pass_context=True)
def notify(ctx: JobContext, email: str) -> str:
    record(ctx, "notify@1", email, ctx.attempt)
    return email
