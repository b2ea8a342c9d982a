"""Procedures of workflows: insert one whole, read its nodes, list the newest.

The rules that keep a workflow from hanging live in the statements that finish
jobs (``ack_succeeded`` advances waiting nodes, ``fragment_fail_dependents``
kills the ones downstream of a dead node); this module only writes and reads.
"""

from __future__ import annotations

from psycopg.sql import Identifier

from jobqueue.db.statement import Op, Procedure, row, rows
from jobqueue.protocol import job_channel
from jobqueue.rows import WorkflowIds, WorkflowNode, WorkflowSummary
from jobqueue.workflow import Plan


def insert(plan: Plan, schema: str, correlation_id: str | None) -> Procedure[WorkflowIds]:
    """The workflow, its nodes and edges in one statement; its id and the nodes' ids."""
    nodes, edges = plan.nodes, plan.edges
    inserted: WorkflowIds = yield row("insert_workflow", {
        "n": len(nodes), "correlation_id": correlation_id,
        "table": Identifier(schema, "jobs").as_string(None), "channel": job_channel(schema),
        "queues": [n.queue for n in nodes], "tasks": [n.task for n in nodes],
        "args": [n.args for n in nodes], "priorities": [n.priority for n in nodes],
        "max_attempts": [n.max_attempts for n in nodes], "waiting": plan.waiting(),
        "lock_keys": [n.lock_key for n in nodes],
        "edge_nodes": [e[0] for e in edges], "edge_deps": [e[1] for e in edges],
        "edge_positions": [e[2] for e in edges]}, WorkflowIds)
    return inserted


def nodes(workflow_id: int) -> Op:
    return rows("workflow_nodes", {"id": workflow_id}, WorkflowNode)


def newest(limit: int) -> Op:
    return rows("workflow_list", {"limit": limit}, WorkflowSummary)
