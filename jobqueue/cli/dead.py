"""``jobqueue dead``: list, show, count, replay and purge dead jobs."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from jobqueue.cli.options import Dsn, Json, Schema, parse_age, parse_when, plain_app
from jobqueue.cli.output import emit_json, fail, short, table
from jobqueue.dead import DeadFilter

app = typer.Typer(help="Jobs that could not succeed: inspect, replay, purge.",
                  no_args_is_help=True)

Ids = Annotated[list[int] | None, typer.Argument(help="Dead job ids.", show_default=False)]
Task = Annotated[str | None, typer.Option("--task", help="Only this task.")]
Queue = Annotated[str | None, typer.Option("--queue", help="Only this queue.")]
Reason = Annotated[str | None, typer.Option(
    "--reason", help="exhausted, permanent, timeout, crashed, unknown_task...")]
Error = Annotated[str | None, typer.Option(
    "--error", help="Text found in the error history (case-insensitive).")]
Since = Annotated[str | None, typer.Option(
    "--since", help="Died at or after: ISO time or an age such as 2h, 30m, 7d.")]
Until = Annotated[str | None, typer.Option("--until", help="Died before: ISO time or an age.")]
Replayed = Annotated[bool, typer.Option(
    "--include-replayed", help="Also rows that were already replayed.")]


def _filter(ids: list[int] | None, task: str | None, queue: str | None, reason: str | None,
            error: str | None, since: str | None, until: str | None,
            include_replayed: bool = False, older_than: str | None = None,
            everything: bool = False) -> DeadFilter:
    return DeadFilter(
        ids=tuple(ids or ()), task=task, queue=queue, reason=reason, error=error,
        since=parse_when(since, "--since") if since else None,
        until=parse_when(until, "--until") if until else None,
        older_than=parse_age(older_than, "--older-than") if older_than else None,
        include_replayed=include_replayed, all=everything)


@app.command("list")
def list_cmd(task: Task = None, queue: Queue = None, reason: Reason = None, error: Error = None,
             since: Since = None, until: Until = None, include_replayed: Replayed = False,
             limit: Annotated[int, typer.Option("--limit", min=1)] = 50,
             dsn: Dsn = None, schema: Schema = None, as_json: Json = False) -> None:
    """List dead jobs, newest first."""
    jq = plain_app(dsn, schema)
    where = _filter(None, task, queue, reason, error, since, until, include_replayed)
    with jq.connect() as conn:
        rows = jq.dead.list(where, limit=limit, conn=conn)
    if as_json:
        emit_json([r.as_dict() for r in rows])
        return
    if not rows:
        typer.echo("no dead jobs match")
        return
    typer.echo(table(
        ["id", "task", "queue", "reason", "attempts", "died at", "last error", "replayed as"],
        [[r.id, r.task, r.queue, r.reason, r.attempts, r.died_at.strftime("%Y-%m-%d %H:%M:%S"),
          short(f"{r.last_error_type}: {r.last_error}" if r.last_error_type else None),
          r.replayed_as] for r in rows]))


@app.command("show")
def show_cmd(job_id: Annotated[int, typer.Argument(help="Dead job id.")],
             dsn: Dsn = None, schema: Schema = None, as_json: Json = False) -> None:
    """Everything about one dead job: payload, every attempt, tracebacks."""
    jq = plain_app(dsn, schema)
    with jq.connect() as conn:
        job = jq.dead.get(job_id, conn=conn)
    if job is None:
        raise fail(f"no dead job with id {job_id}")
    if as_json:
        emit_json(job.as_dict())
        return
    typer.echo(f"dead job {job.id}: {job.task} on queue {job.queue!r}")
    limit = "" if job.max_attempts is None else f"/{job.max_attempts}"
    typer.echo(f"  reason:     {job.reason} after {job.attempts}{limit} attempts")
    typer.echo(f"  created:    {job.created_at.isoformat()}")
    typer.echo(f"  died:       {job.died_at.isoformat()}")
    if job.replay_of:
        typer.echo(f"  replay of:  dead job {job.replay_of}")
    if job.replayed_at:
        typer.echo(f"  replayed:   {job.replay_count}x, last at {job.replayed_at.isoformat()} "
                   f"as job {job.replayed_as}")
    typer.echo(f"  args:       {json.dumps(job.args)}")
    if job.version != 1:  # unversioned tasks are all version 1: say it only when it tells
        typer.echo(f"  version:    {job.version} (of the task's payload)")
    for entry in job.errors:
        typer.echo(f"\n-- attempt {entry.get('attempt')} at {entry.get('at')} on "
                   f"{entry.get('worker')}: {entry.get('type')}: {entry.get('message')}")
        if entry.get("traceback"):
            typer.echo(str(entry["traceback"]).rstrip())


@app.command("count")
def count_cmd(task: Task = None, queue: Queue = None, reason: Reason = None,
              fail_above: Annotated[int | None, typer.Option(
                  "--fail-above", help="Exit 1 when more than N dead jobs match (alerting).")]
              = None,
              dsn: Dsn = None, schema: Schema = None, as_json: Json = False) -> None:
    """How many dead jobs (not yet replayed) match."""
    jq = plain_app(dsn, schema)
    with jq.connect() as conn:
        n = jq.dead.count(_filter(None, task, queue, reason, None, None, None), conn=conn)
    if as_json:
        emit_json({"dead": n})
    else:
        typer.echo(str(n))
    if fail_above is not None and n > fail_above:
        raise typer.Exit(1)


@app.command("replay")
def replay_cmd(ids: Ids = None, task: Task = None, queue: Queue = None, reason: Reason = None,
               error: Error = None, since: Since = None, until: Until = None,
               everything: Annotated[bool, typer.Option("--all", help="Every dead job.")]
               = False,
               dry_run: Annotated[bool, typer.Option("--dry-run",
                                                     help="Show what would be replayed.")]
               = False,
               dsn: Dsn = None, schema: Schema = None, as_json: Json = False) -> None:
    """Re-enqueue dead jobs (attempts reset); each dead row records its replay."""
    where = _filter(ids, task, queue, reason, error, since, until, everything=everything)
    if not where.selects_something:
        raise fail("name what to replay: ids, --task/--queue/--reason/--error/--since/--until, "
                   "or --all")
    jq = plain_app(dsn, schema)
    if dry_run:
        with jq.connect() as conn:
            n = jq.dead.count(where, conn=conn)
            rows = jq.dead.list(where, limit=max(n, 1), conn=conn)
            revive = jq.dead.would_revive([r.id for r in rows], conn=conn)
        if as_json:
            emit_json({"dry_run": True, "would_replay": [r.id for r in rows],
                       "would_revive": revive})
            return
        typer.echo(f"would replay {n} dead job(s): " + ", ".join(str(r.id) for r in rows[:50])
                   + (" ..." if n > 50 else ""))
        if revive:
            typer.echo(f"and revive {len(revive)} workflow node(s) that died of them: "
                       + ", ".join(str(i) for i in revive[:50])
                       + (" ..." if len(revive) > 50 else ""))
        return
    result = jq.dead.replay(where)
    if as_json:
        emit_json({"replayed": result.replayed, "skipped": result.skipped,
                   "revived": result.revived})
        return
    typer.echo(f"replayed {len(result.replayed)} dead job(s)"
               + (f", skipped {result.skipped} (a live job holds its unique_key, or a workflow "
                  "node waiting on a dead one: replay that one)" if result.skipped else "")
               + (f"; revived {len(result.revived)} workflow node(s) waiting on them"
                  if result.revived else ""))
    for dead_id, job_id in list(result.replayed.items())[:20]:
        typer.echo(f"  dead {dead_id} -> job {job_id}")


@app.command("purge")
def purge_cmd(ids: Ids = None, task: Task = None, queue: Queue = None, reason: Reason = None,
              error: Error = None, since: Since = None, until: Until = None,
              older_than: Annotated[str | None, typer.Option(
                  "--older-than", help="Died longer ago than this age, e.g. 30d.")] = None,
              everything: Annotated[bool, typer.Option("--all", help="Every dead job.")]
              = False,
              yes: Annotated[bool, typer.Option("--yes", help="Really delete.")] = False,
              dsn: Dsn = None, schema: Schema = None, as_json: Json = False) -> None:
    """Delete dead jobs for good (replayed ones included). Refuses without --yes."""
    where = _filter(ids, task, queue, reason, error, since, until, include_replayed=True,
                    older_than=older_than, everything=everything)
    if not where.selects_something:
        raise fail("name what to purge: ids, filters, --older-than, or --all")
    jq = plain_app(dsn, schema)
    if not yes:
        with jq.connect() as conn:
            n = jq.dead.count(where, conn=conn)
        raise fail(f"would purge {n} dead job(s); add --yes to delete them for good")
    with jq.connect() as conn:
        n = jq.dead.purge(where, conn=conn)
    if as_json:
        emit_json({"purged": n})
    else:
        typer.echo(f"purged {n} dead job(s)")
