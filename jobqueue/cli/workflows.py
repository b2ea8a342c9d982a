"""``jobqueue workflow show`` and ``jobqueue workflow list``: workflows and their nodes."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from jobqueue.cli.options import Dsn, Json, Schema, plain_app
from jobqueue.cli.output import emit_json, fail, short, table
from jobqueue.errors import WorkflowNotFound

app = typer.Typer(help="Workflows (chain, group, chord): every node and where it is.",
                  no_args_is_help=True)


@app.command("show")
def show_cmd(workflow_id: Annotated[int, typer.Argument(help="Workflow id.")],
             dsn: Dsn = None, schema: Schema = None, as_json: Json = False) -> None:
    """Each node: state, attempts, result or error, the nodes it waits for."""
    jq = plain_app(dsn, schema)
    try:
        with jq.connect() as conn:
            info = jq.workflow(workflow_id, conn=conn)
    except WorkflowNotFound as exc:
        raise fail(str(exc)) from None
    if as_json:
        emit_json(info.as_dict())
        return
    typer.echo(f"workflow {info.id}: {info.state}, {len(info.nodes)} node(s)")
    typer.echo(table(["job", "task", "state", "attempts", "after", "result / error"], [
        [n.id, n.task, n.state + (f" ({n.reason})" if n.reason and n.state == "dead" else ""),
         n.attempts, ",".join(map(str, n.depends_on)) or None,
         short(json.dumps(n.result) if n.state == "succeeded" else n.error)]
        for n in info.nodes]))


@app.command("list")
def list_cmd(limit: Annotated[int, typer.Option("--limit", min=1, max=10_000)] = 50,
             dsn: Dsn = None, schema: Schema = None, as_json: Json = False) -> None:
    """The newest workflows: nodes live, succeeded and dead."""
    jq = plain_app(dsn, schema)
    with jq.connect() as conn:
        found = jq.workflows(limit=limit, conn=conn)
    if as_json:
        emit_json([w.as_dict() for w in found])
        return
    if not found:
        typer.echo("no workflows")
        return
    typer.echo(table(["id", "state", "nodes", "live", "succeeded", "dead", "created at"], [
        [w.id, w.state, w.nodes, w.live, w.succeeded, w.dead,
         w.created_at.strftime("%Y-%m-%d %H:%M:%S")] for w in found]))

