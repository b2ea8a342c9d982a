"""Release N+1 of the app of tests/apps/versions_v1.py: ``notify`` takes a list.

Version 2 of the payload is ``{"emails": [...], "subject": ...}``; jobs
enqueued by release N (version 1) are upgraded before the handler sees them.
"""

from __future__ import annotations

from typing import Any

from jobqueue import JobContext, JobQueue
from tests.apps.process_app import record

app = JobQueue()


def from_v1(args: dict[str, Any]) -> dict[str, Any]:
    return {"emails": [args["email"]], "subject": "(none)"}


@app.task(queue="deploy", pass_context=True, version=2, upgrade={1: from_v1})
def notify(ctx: JobContext, emails: list[str], subject: str) -> str:
    record(ctx, "notify@2", f"{','.join(emails)}|{subject}", ctx.attempt)
    return subject
