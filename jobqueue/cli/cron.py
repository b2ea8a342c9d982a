"""``jobqueue cron``: the periodic schedules stored by the workers' schedulers."""

from __future__ import annotations

from datetime import datetime

import typer

from jobqueue.cli.options import Dsn, Json, Schema, plain_app
from jobqueue.cli.output import emit_json, table
from jobqueue.db.admin import stored_schedules

app = typer.Typer(help="Periodic jobs: the schedules the workers fire.", no_args_is_help=True)


def _when(instant: datetime | None) -> str | None:
    return instant.isoformat(sep=" ", timespec="seconds") if instant is not None else None


@app.command("list")
def list_cmd(dsn: Dsn = None, schema: Schema = None, as_json: Json = False) -> None:
    """Every schedule: expression, timezone, task, queue, overlap, last and next fire.

    Times are shown on the schedule's own clock (its timezone); --json gives them
    in UTC. A schedule is stored when a worker whose app defines it starts.
    """
    jq = plain_app(dsn, schema)
    with jq.connect() as conn:
        rows = jq.store.run(stored_schedules(), conn)
    if as_json:
        emit_json([r.as_dict() for r in rows])
        return
    if not rows:
        typer.echo("no schedules: they are stored when a worker whose app defines them starts")
        return
    typer.echo(table(
        ["name", "expression", "timezone", "task", "queue", "overlap", "last fire", "next fire"],
        [[r.name, r.expression, r.timezone, r.task, r.queue, r.overlap,
          _when(r.local(r.last_fire_at)), _when(r.local(r.next_fire_at))] for r in rows]))
