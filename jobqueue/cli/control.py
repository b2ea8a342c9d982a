"""``jobqueue queue pause|resume|limit|list`` and ``jobqueue cancel``: steer the fleet."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

import typer

from jobqueue.cli.options import Dsn, Json, Schema, plain_app
from jobqueue.cli.output import emit_json, fail, table

queue_app = typer.Typer(help="Pause, resume and limit queues for every worker.",
                        no_args_is_help=True)
Name = Annotated[str, typer.Argument(help="Queue name.")]


def _pausing(paused: bool) -> Callable[..., None]:
    def command(name: Name, dsn: Dsn = None, schema: Schema = None) -> None:
        jq = plain_app(dsn, schema)
        with jq.connect() as conn:
            (jq.queues.pause if paused else jq.queues.resume)(name, conn=conn)
        typer.echo(f"queue {name!r} {'paused' if paused else 'resumed'}")

    return command


queue_app.command("pause", help="Stop claiming from NAME on every worker (running jobs "
                  "finish).")(_pausing(True))
queue_app.command("resume", help="Let workers claim from NAME again.")(_pausing(False))


@queue_app.command("limit")
def limit_cmd(
    name: Name,
    max_running: Annotated[int | None, typer.Option(
        "--max-running", min=1, help="At most N jobs of NAME running fleet-wide.")] = None,
    rate: Annotated[int | None, typer.Option(
        "--rate", min=1, help="At most N jobs of NAME started per --per seconds.")] = None,
    per: Annotated[float | None, typer.Option("--per", help="Rate period, seconds.")] = None,
    max_ready: Annotated[int | None, typer.Option(
        "--max-ready", min=1, help="Backpressure: once N jobs of NAME are ready, an enqueue "
        "warns (and counts), or with --reject raises QueueFull.")] = None,
    reject: Annotated[bool, typer.Option(
        "--reject", help="With --max-ready: refuse enqueues into a full NAME.")] = False,
    dsn: Dsn = None, schema: Schema = None,
) -> None:
    """Set NAME's fleet-wide limits; omitted limits are cleared."""
    if (rate is None) != (per is None):
        raise fail("--rate and --per go together (e.g. --rate 100 --per 60)")
    if reject and max_ready is None:
        raise fail("--reject needs --max-ready (e.g. --max-ready 10000 --reject)")
    jq = plain_app(dsn, schema)
    with jq.connect() as conn:
        jq.queues.set_limits(name, max_running=max_running, rate_limit=rate, rate_period=per,
                             max_ready=max_ready, reject_when_full=reject, conn=conn)
    parts = [f"max running {max_running}" if max_running else "no concurrency limit",
             f"{rate} per {per:g}s" if rate and per else "no rate limit",
             f"max ready {max_ready} ({_when_full(reject)} when full)" if max_ready
             else "no ready limit"]
    typer.echo(f"queue {name!r}: " + ", ".join(parts))


def _when_full(reject: bool) -> str:
    return "rejects" if reject else "warns"


@queue_app.command("list")
def list_cmd(dsn: Dsn = None, schema: Schema = None, as_json: Json = False) -> None:
    """Queues with controls set (paused, limits, max ready)."""
    jq = plain_app(dsn, schema)
    with jq.connect() as conn:
        rows = jq.queues.settings(conn=conn)
    if as_json:
        emit_json([r.as_dict() for r in rows])
        return
    if not rows:
        typer.echo("no queue has controls set: all run, unlimited")
        return
    typer.echo(table(["queue", "paused", "max running", "rate", "max ready", "when full"],
                     [[r.name, "yes" if r.paused else "no", r.max_running,
                       f"{r.rate_limit}/{r.rate_period:g}s" if r.rate_limit and r.rate_period
                       else None, r.max_ready,
                       ("reject" if r.reject_when_full else "warn") if r.max_ready else None]
                      for r in rows]))


def register(app: typer.Typer) -> None:
    app.add_typer(queue_app, name="queue")

    @app.command("cancel")
    def cancel_cmd(job_id: Annotated[int, typer.Argument(help="Job id.")],
                   dsn: Dsn = None, schema: Schema = None, as_json: Json = False) -> None:
        """Cancel a job: a queued one moves to dead_jobs (reason cancelled); a running
        one is asked to stop."""
        jq = plain_app(dsn, schema)
        with jq.connect() as conn:
            outcome = jq.cancel(job_id, conn=conn)
        if as_json:
            emit_json({"id": job_id, "outcome": outcome})
        elif outcome == "not_found":
            raise fail(f"no queued or running job with id {job_id}")
        elif outcome == "cancelled":
            typer.echo(f"job {job_id} cancelled (kept in dead_jobs, reason cancelled)")
        else:
            typer.echo(f"job {job_id} is running: its worker was asked to stop it")
        if outcome == "not_found":
            raise typer.Exit(1)
