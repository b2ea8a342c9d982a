"""``jobqueue queue pause|resume|limit|list`` and ``jobqueue cancel``: steer the fleet."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Annotated

import typer

from jobqueue.cli.options import Dsn, Json, Schema, plain_app
from jobqueue.cli.output import emit_json, fail, table
from jobqueue.rows import QueueSettings

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
    reject: Annotated[bool | None, typer.Option(
        "--reject/--warn", help="What an enqueue into NAME does once it holds --max-ready "
        "ready jobs: refuse (QueueFull) or warn.", show_default=False)] = None,
    clear: Annotated[bool, typer.Option(
        "--clear", help="Drop NAME's limits first: only the ones given remain.")] = False,
    dsn: Dsn = None, schema: Schema = None,
) -> None:
    """Set NAME's fleet-wide limits; the ones not given stay as they are (see --clear)."""
    if (rate is None) != (per is None):
        raise fail("--rate and --per go together (e.g. --rate 100 --per 60)")
    if not clear and all(v is None for v in (max_running, rate, max_ready, reject)):
        raise fail("give a limit to set (--max-running, --rate/--per, --max-ready), "
                   "or --clear to drop them all")
    jq = plain_app(dsn, schema)
    with jq.connect() as conn:
        # Read and set on one connection: an operator's command, not a hot path.
        kept = QueueSettings(name) if clear else next(
            iter(jq.queues.settings([name], conn=conn)), QueueSettings(name))
        limits = replace(
            kept,
            max_running=kept.max_running if max_running is None else max_running,
            rate_limit=kept.rate_limit if rate is None else rate,
            rate_period=kept.rate_period if per is None else per,
            max_ready=kept.max_ready if max_ready is None else max_ready,
            reject_when_full=kept.reject_when_full if reject is None else reject)
        if limits.reject_when_full and limits.max_ready is None:
            raise fail("--reject needs --max-ready (e.g. --max-ready 10000 --reject)")
        jq.queues.set_limits(name, max_running=limits.max_running,
                             rate_limit=limits.rate_limit, rate_period=limits.rate_period,
                             max_ready=limits.max_ready,
                             reject_when_full=limits.reject_when_full, conn=conn)
    typer.echo(f"queue {name!r}: " + _described(limits))


def _described(q: QueueSettings) -> str:
    return ", ".join([
        f"max running {q.max_running}" if q.max_running else "no concurrency limit",
        f"{q.rate_limit} per {q.rate_period:g}s" if q.rate_limit and q.rate_period
        else "no rate limit",
        f"max ready {q.max_ready} ({_when_full(q.reject_when_full)} when full)" if q.max_ready
        else "no ready limit"])


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
