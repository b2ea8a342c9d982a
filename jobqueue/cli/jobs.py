"""``jobqueue job show`` and ``jobqueue history list``: what became of a job."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from jobqueue.cli.options import Dsn, Json, Schema, parse_when, plain_app
from jobqueue.cli.output import emit_json, fail, table
from jobqueue.errors import JobNotFound
from jobqueue.rows import JobInfo

job_app = typer.Typer(help="One job, wherever it is: live, dead or in history.",
                      no_args_is_help=True)
history_app = typer.Typer(help="Succeeded jobs, kept for the history's retention.",
                          no_args_is_help=True)


def _when(info: JobInfo, name: str) -> str:
    value = getattr(info, name)
    return "-" if value is None else value.isoformat()


@job_app.command("show")
def show_cmd(job_id: Annotated[int, typer.Argument(help="Job id.")],
             dsn: Dsn = None, schema: Schema = None, as_json: Json = False) -> None:
    """State, attempts, errors, result, progress and timings of one job."""
    jq = plain_app(dsn, schema)
    try:
        with jq.connect() as conn:
            info = jq.job(job_id, conn=conn)
    except JobNotFound as exc:
        raise fail(str(exc)) from None
    if as_json:
        emit_json(info.as_dict())
        return
    limit = "" if info.max_attempts is None else f"/{info.max_attempts}"
    typer.echo(f"job {info.id}: {info.task} on queue {info.queue!r}: {info.state}"
               + (f" ({info.reason})" if info.reason and info.state == "dead" else ""))
    typer.echo(f"  attempts:   {info.attempts}{limit}")
    typer.echo(f"  enqueued:   {_when(info, 'created_at')}")
    if info.state in ("queued", "scheduled"):
        typer.echo(f"  runs at:    {_when(info, 'run_at')}")
    typer.echo(f"  started:    {_when(info, 'started_at')}")
    if info.finished:
        typer.echo(f"  finished:   {_when(info, 'finished_at')}"
                   + ("" if info.duration is None else f" (ran {info.duration:.3f}s)"))
    if info.worker:
        typer.echo(f"  worker:     {info.worker}")
    if info.correlation_id:
        typer.echo(f"  correlation {info.correlation_id}")
    report = info.report
    if report is not None:
        total = "" if report.total is None else f" of {report.total:g}"
        note = f" - {report.note}" if report.note else ""
        typer.echo(f"  progress:   {report.done:g}{total}{note} (at {report.at.isoformat()})")
    typer.echo(f"  args:       {json.dumps(info.args)}")
    if info.version != 1:  # unversioned tasks are all version 1: say it only when it tells
        typer.echo(f"  version:    {info.version} (of the task's payload)")
    if info.state == "succeeded":
        typer.echo(f"  result:     {json.dumps(info.result)}")
    if info.replayed_as:
        typer.echo(f"  replayed as job {info.replayed_as}")
    for entry in info.errors:
        typer.echo(f"\n-- attempt {entry.get('attempt')} at {entry.get('at')} on "
                   f"{entry.get('worker')}: {entry.get('type')}: {entry.get('message')}")
        if entry.get("traceback"):
            typer.echo(str(entry["traceback"]).rstrip())


@history_app.command("list")
def list_cmd(task: Annotated[str | None, typer.Option("--task", help="Only this task.")] = None,
             since: Annotated[str | None, typer.Option(
                 "--since", help="Finished at or after: ISO time or an age such as 2h, 7d.")]
             = None,
             limit: Annotated[int, typer.Option("--limit", min=1, max=10_000)] = 50,
             dsn: Dsn = None, schema: Schema = None, as_json: Json = False) -> None:
    """Succeeded jobs, newest first."""
    jq = plain_app(dsn, schema)
    when = parse_when(since, "--since") if since else None
    with jq.connect() as conn:
        entries = jq.history(task=task, since=when, limit=limit, conn=conn)
    if as_json:
        emit_json([e.as_dict() for e in entries])
        return
    if not entries:
        typer.echo("no succeeded jobs match")
        return
    typer.echo(table(["id", "task", "queue", "attempts", "finished at", "ran", "worker"], [
        [e.id, e.task, e.queue, e.attempts, e.finished_at.strftime("%Y-%m-%d %H:%M:%S"),
         None if e.duration is None else f"{e.duration:.3f}s", e.worker] for e in entries]))
