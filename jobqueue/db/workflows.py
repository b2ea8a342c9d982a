"""Procedures of workflows: insert one whole, read its nodes, list the newest.

The rules that keep a workflow from hanging live in the statements that finish
jobs (``ack_succeeded`` advances waiting nodes, ``fragment_fail_dependents``
kills the ones downstream of a dead node); this module only writes and reads.
"""

from __future__ import annotations

from collections.abc import Iterator

from psycopg.sql import Identifier

from jobqueue.db.jobs import COPY_CHUNK, COPY_THRESHOLD, copy_text
from jobqueue.db.statement import Copy, InPipeline, Op, Procedure, Transaction, row, rows
from jobqueue.protocol import job_channel
from jobqueue.rows import WorkflowIds, WorkflowNode, WorkflowSummary
from jobqueue.workflow import Plan


def insert(plan: Plan, schema: str, correlation_id: str | None,
           trace_context: str | None = None) -> Procedure[WorkflowIds]:
    """The workflow, its nodes and edges in one statement; its id and the nodes' ids.

    From ``COPY_THRESHOLD`` nodes on, by COPY instead (three steps in a transaction,
    a savepoint in the caller's): the arrays one statement needs are built and parsed
    element by element, and took 2.5 times as long as enqueue_many's COPY of as many
    plain jobs for a 10,000-member chord.
    """
    if len(plan.nodes) >= COPY_THRESHOLD and not (yield InPipeline()):
        copied: WorkflowIds = yield Transaction(_copy(plan, schema, correlation_id,
                                                      trace_context))
        return copied
    nodes, edges = plan.nodes, plan.edges
    inserted: WorkflowIds = yield row("insert_workflow", {
        "n": len(nodes), "correlation_id": correlation_id, "trace_context": trace_context,
        "table": Identifier(schema, "jobs").as_string(None), "channel": job_channel(schema),
        "queues": [n.queue for n in nodes], "tasks": [n.task for n in nodes],
        "args": [n.args for n in nodes], "priorities": [n.priority for n in nodes],
        "max_attempts": [n.max_attempts for n in nodes], "waiting": plan.waiting(),
        "lock_keys": [n.lock_key for n in nodes],
        "versions": [n.version for n in nodes],
        "edge_nodes": [e[0] for e in edges], "edge_deps": [e[1] for e in edges],
        "edge_positions": [e[2] for e in edges]}, WorkflowIds)
    return inserted


def _copy(plan: Plan, schema: str, correlation_id: str | None,
          trace_context: str | None) -> Procedure[WorkflowIds]:
    waiting = plan.waiting()
    ready = sorted({n.queue for n, w in zip(plan.nodes, waiting, strict=True) if w == 0})
    reserved: WorkflowIds = yield row("reserve_workflow", {
        "n": len(plan.nodes), "correlation_id": correlation_id, "ready_queues": ready,
        "table": Identifier(schema, "jobs").as_string(None), "channel": job_channel(schema)},
        WorkflowIds)
    yield Copy("copy_workflow_jobs", _node_rows(plan, reserved, waiting, correlation_id,
                                                trace_context))
    if plan.edges:
        yield Copy("copy_workflow_edges", _edge_rows(plan, reserved.ids))
    return reserved


def _null(value: str | None) -> str:
    return "\\N" if value is None else copy_text(value)


def _node_rows(plan: Plan, reserved: WorkflowIds, waiting: list[int],
               correlation_id: str | None, trace_context: str | None) -> Iterator[str]:
    shared = f"{reserved.id}\t{_null(correlation_id)}"
    trace = _null(trace_context)
    lines = []
    for job_id, node, count in zip(reserved.ids, plan.nodes, waiting, strict=True):
        attempts = "\\N" if node.max_attempts is None else str(node.max_attempts)
        state = "waiting" if count else "queued"
        lines.append(f"{job_id}\t{copy_text(node.queue)}\t{copy_text(node.task)}\t"
                     f"{copy_text(node.args)}\t{node.priority}\t{attempts}\t{state}\t{count}\t"
                     f"{shared}\t{_null(node.lock_key)}\t{trace}\t{node.version}\n")
        if len(lines) >= COPY_CHUNK:
            yield "".join(lines)
            lines = []
    if lines:
        yield "".join(lines)


def _edge_rows(plan: Plan, ids: list[int]) -> Iterator[str]:
    for first in range(0, len(plan.edges), COPY_CHUNK):
        yield "".join(f"{ids[node - 1]}\t{position}\t{ids[dep - 1]}\n"
                      for node, dep, position in plan.edges[first:first + COPY_CHUNK])


def nodes(workflow_id: int) -> Op:
    return rows("workflow_nodes", {"id": workflow_id}, WorkflowNode)


def newest(limit: int) -> Op:
    return rows("workflow_list", {"limit": limit}, WorkflowSummary)
