"""A worker app for the systemd notification test: one quick task."""

from __future__ import annotations

import jobqueue

app = jobqueue.JobQueue()  # DSN and schema from $JOBQUEUE_DSN / $JOBQUEUE_SCHEMA


@app.task()
def noop() -> None:
    return None
