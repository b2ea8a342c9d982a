"""Procedures of results and history: where a job is, who waits, what succeeded.

``job_info`` finds a job in whichever table holds it (jobs, dead_jobs or
job_history) in one statement, so a job moving between them is never missed
or seen twice. ``mark_awaited`` flags a live job as waited for: only then do
the statements that finish it send a NOTIFY (see ``fragment_notify_awaited``).
"""

from __future__ import annotations

from datetime import datetime

from jobqueue.db.statement import Op, row, rows, run
from jobqueue.rows import HistoryEntry, JobInfo, RunningJob


def job_info(job_id: int) -> Op:
    return row("job_info", {"id": job_id}, JobInfo)


def mark_awaited(job_id: int) -> Op:
    return run("mark_awaited", {"id": job_id})


def running_jobs(limit: int) -> Op:
    return rows("running_jobs", {"limit": limit}, RunningJob)


def history_list(task: str | None, since: datetime | None, limit: int) -> Op:
    return rows("history_list", {"task": task, "since": since, "limit": limit}, HistoryEntry)
