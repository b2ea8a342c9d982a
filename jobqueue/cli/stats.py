"""``jobqueue stats``: depth of every queue."""

from __future__ import annotations

import dataclasses

import typer

from jobqueue.cli.options import Dsn, Json, Schema, plain_app
from jobqueue.cli.output import age, emit_json, table


def register(app: typer.Typer) -> None:
    @app.command("stats")
    def stats_cmd(dsn: Dsn = None, schema: Schema = None, as_json: Json = False) -> None:
        """Per queue: ready, scheduled, running and dead jobs, and the oldest ready job's age."""
        jq = plain_app(dsn, schema)
        with jq.connect() as conn:
            rows = jq.stats(conn=conn)
        if as_json:
            emit_json([dataclasses.asdict(r) for r in rows])
            return
        if not rows:
            typer.echo("no jobs: every queue is empty")
            return
        typer.echo(table(
            ["queue", "ready", "scheduled", "running", "dead", "oldest ready"],
            [[r.queue, r.queued, r.scheduled, r.running, r.dead, age(r.oldest_age)]
             for r in rows]))
