"""``jobqueue demo``: see transactional enqueue, retries and dead jobs in one command."""

from __future__ import annotations

import json

import typer

from jobqueue import demo as demo_run
from jobqueue.cli.options import Dsn, Json
from jobqueue.cli.output import table
from jobqueue.config import describe_dsn, resolve_dsn
from jobqueue.log import configure


def register(app: typer.Typer) -> None:
    @app.command("demo")
    def demo_cmd(dsn: Dsn = None, as_json: Json = False) -> None:
        """Enqueue jobs with a business row, run a worker until they settle, show the outcome."""
        configure(level="error", force=True)  # the table tells the story; keep logs quiet
        resolved = resolve_dsn(dsn)
        if not as_json:
            where = describe_dsn(resolved) if resolved else "the embedded Postgres (no DSN set)"
            typer.echo(f"jobqueue demo on {where}, schema {demo_run.DEMO_SCHEMA!r}")
            typer.echo("1. one transaction: INSERT a user + enqueue 3 jobs -> COMMIT")
            typer.echo("2. another transaction: enqueue 1 job -> ROLLBACK")
            typer.echo("3. a worker runs until every job has settled ...\n")
        result = demo_run.run(resolved)
        if as_json:
            typer.echo(json.dumps({"jobs": result.rows, "elapsed": round(result.elapsed, 2)},
                                  indent=2))
            return
        typer.echo(table(["job", "task", "outcome", "attempts", "detail"],
                         [[r["job"], r["task"], r["outcome"], r["attempts"], r["detail"]]
                          for r in result.rows]))
        typer.echo(f"\nsettled in {result.elapsed:.1f}s. Every committed job either succeeded or "
                   "is in dead_jobs; the rolled-back job never existed.")
        typer.echo(f"Inspect them: jobqueue stats --schema {demo_run.DEMO_SCHEMA}")
