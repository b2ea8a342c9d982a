"""Statements only the dashboard reads: the hour's outcome series, a capped count.

Everything else it shows comes from the statements of ``stats``, ``dead``,
``job``, ``history``, ``cron list`` and ``doctor``, each bounded by a LIMIT.
"""

from __future__ import annotations

from typing import Any

from jobqueue.db.statement import Op, rows, scalar
from jobqueue.rows import OutcomeMinute, WorkerLoad


def outcome_series() -> Op:
    return rows("outcome_series", None, OutcomeMinute)


def dead_count_capped(where: dict[str, Any], cap: int) -> Op:
    return scalar("dead_count_capped", {**where, "cap": cap})


def worker_inflight() -> Op:
    return rows("worker_inflight", None, WorkerLoad)
