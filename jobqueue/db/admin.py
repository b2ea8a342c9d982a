"""Procedures of the operators' tools: dead jobs, queue controls and backpressure, the
overview, cron.

The filters of every dead-jobs command share one SQL fragment
(``fragment_dead_filter``) where each filter is optional (NULL means "any"),
so one static statement serves every combination.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from psycopg.sql import Identifier

from jobqueue import sql
from jobqueue.backpressure import Backpressure
from jobqueue.config import DEFAULT_WORKER_TIMEOUT
from jobqueue.db.fleet import notify
from jobqueue.db.statement import Op, Procedure, in_transaction, row, rows, run, scalar
from jobqueue.protocol import SETTINGS_CHANGED
from jobqueue.rows import (
    DeadJob,
    DeadJobSummary,
    JobId,
    QueueLoad,
    QueueOverview,
    ReplayedRow,
    StoredSchedule,
)

T = TypeVar("T")

# -- dead jobs ------------------------------------------------------------------------------


def dead_list(where: dict[str, Any], limit: int) -> Op:
    return rows("dead_list", {**where, "limit": limit}, DeadJobSummary)


def dead_count(where: dict[str, Any]) -> Op:
    return scalar("dead_count", where)


def dead_show(job_id: int) -> Op:
    return row("dead_show", {"id": job_id}, DeadJob)


def dead_purge(where: dict[str, Any]) -> Op:
    return rows("dead_purge", where, JobId)


def dead_replay_batch(where: dict[str, Any], after_id: int, limit: int,
                      channel: str) -> Procedure[tuple[list[ReplayedRow], list[int]]]:
    """One batch of a replay, in one transaction: new jobs inserted and the dead rows
    marked (one statement; batches walk the ids upwards, ``after_id``), then for
    workflow nodes among them the revival of what died of them (the ids revived)."""
    batch: tuple[list[ReplayedRow], list[int]] = yield from in_transaction(
        _replay_batch(where, after_id, limit, channel))
    return batch


def _replay_batch(where: dict[str, Any], after_id: int, limit: int,
                  channel: str) -> Procedure[tuple[list[ReplayedRow], list[int]]]:
    replayed: list[ReplayedRow] = yield rows("dead_replay", {
        **where, "after_id": after_id, "limit": limit, "channel": channel}, ReplayedRow)
    pairs = [(r.dead_id, r.job_id) for r in replayed
             if r.dead_id is not None and r.job_id is not None]
    revived: list[int] = []
    if not pairs:
        return replayed, revived
    touched: list[Any] = yield rows("workflow_replayed", {
        "old_ids": [p[0] for p in pairs], "new_ids": [p[1] for p in pairs]}, _WorkflowId)
    workflows = [t.workflow_id for t in touched]
    while workflows:
        # Level by level: a node comes back once each of its dependencies is done or live.
        step: list[JobId] = yield rows("workflow_revive", {"workflows": workflows}, JobId)
        if not step:
            break
        revived += [r.id for r in step]
    return replayed, revived


@dataclass(frozen=True, slots=True)
class _WorkflowId:
    workflow_id: int


def doomed_by(ids: list[int]) -> Op:
    """The dead nodes a replay of ``ids`` would revive (dry run)."""
    return rows("workflow_doomed_by", {"ids": ids}, JobId)


# -- queue controls -------------------------------------------------------------------------


def set_queue(statement: str, params: dict[str, Any], control: str) -> Procedure[None]:
    """Change a queue's controls and tell every worker at once (they also re-read
    them every second, in case they miss the NOTIFY); one transaction."""
    yield from in_transaction(_set_queue(statement, params, control))


def _set_queue(statement: str, params: dict[str, Any], control: str) -> Procedure[None]:
    yield run(statement, params)
    yield notify(control, SETTINGS_CHANGED)


def backpressured(gate: Backpressure, schema: str, queues: Sequence[str],
                  insert: Procedure[T]) -> Procedure[T]:
    """``insert`` (an enqueue into ``queues``, one entry per job) behind its queues'
    ``max_ready``, on the enqueue's connection: QueueFull before the insert is sent,
    or the insert and then the over-limit count (see :mod:`jobqueue.backpressure`).

    Only what is due runs: the catalog's "may this role read the limits?" once,
    then one statement that reads the limits and counts the batch's limited queues.
    """
    if not gate.readable:
        readable = yield scalar("backpressure_readable", {
            "queues": Identifier(schema, "queues").as_string(None),
            "jobs": Identifier(schema, "jobs").as_string(None)})
        gate.set_readable(readable is True)
    full: list[QueueLoad] = []
    if gate.readable:
        loads: list[QueueLoad] = yield rows("backpressure", {"queues": sorted(set(queues))},
                                            QueueLoad)
        full = gate.judge(loads)
    inserted: T = yield from insert
    if full:
        gate.over_limit(full, queues)
    return inserted


# -- overview and schedules -----------------------------------------------------------------


def queue_overview(worker_timeout: float = DEFAULT_WORKER_TIMEOUT,
                   dead_cap: int | None = None) -> Op:
    """Per queue: depth, age, outcomes over the last minute, paused, live workers.

    One statement feeds ``jobqueue stats``, the metrics gauges, ``doctor`` and
    the dashboard, which counts dead jobs no further than ``dead_cap``.
    """
    return rows("queue_overview", {"worker_timeout": worker_timeout, "dead_cap": dead_cap},
                QueueOverview)


def stored_schedules() -> Op:
    return rows("cron_list", None, StoredSchedule)


# -- least privilege ------------------------------------------------------------------------

#: The statements that grant each kind of role what it needs, in order.
GRANTS = {
    "producer": ("grant_schema_usage", "grant_producer", "grant_job_ids",
                 "grant_producer_workflows", "grant_producer_backpressure"),
    # Reading outcomes (app.job, app.result) sees args and results: a right of its own.
    "results": ("grant_schema_usage", "grant_results", "grant_results_workflows"),
    "worker": ("grant_schema_usage", "grant_worker", "grant_worker_reads", "grant_job_ids",
               "grant_worker_history", "grant_worker_workflows"),
}


def grant(kind: str, role: str) -> Procedure[None]:
    """Grant ``role`` the rights of a ``kind`` ("producer" or "worker"); one transaction."""
    yield from in_transaction(_grant(kind, role))


def _grant(kind: str, role: str) -> Procedure[None]:
    for name in GRANTS[kind]:
        yield Op(name, idents=(("role", role),))


def grant_script(schema: str, grants: list[tuple[str, str]]) -> str:
    """The SQL of ``grants`` ((kind, role) pairs), for ``jobqueue migrate --sql``."""
    lines = []
    for kind, role in grants:
        lines.append(f"-- {kind} rights for {role}")
        lines += [sql.compose(name, schema, role=role).as_string(None) + ";"
                  for name in GRANTS[kind]]
    return "\n".join(lines) + "\n"
