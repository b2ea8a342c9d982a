"""Statements of ``jobqueue.testing``: what a test's drain and assertions read and move.

They serve a test database only: ``advance_due`` rewrites run_at, which on a
real queue would cut a retry's backoff short for every worker.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from jobqueue.db.statement import Op, rows
from jobqueue.rows import JobId, JobInfo, QueueName


def live_queues() -> Op:
    return rows("live_queues", None, QueueName)


def advance_due(queues: Sequence[str], scheduled: bool) -> Op:
    return rows("advance_due", {"queues": list(queues), "scheduled": scheduled}, JobId)


def live_jobs(task: str | None, queue: str | None, args: Mapping[str, Any] | None) -> Op:
    return rows("live_jobs", {"task": task, "queue": queue,
                              "args": None if args is None else json.dumps(args)}, JobInfo)
