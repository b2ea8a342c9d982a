"""``jobqueue enqueue``: put one job on a queue from the shell."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from jobqueue.cli.options import AppPath, Dsn, Json, Schema, load_app, plain_app
from jobqueue.cli.output import emit_json, fail


def register(app: typer.Typer) -> None:
    @app.command("enqueue")
    def enqueue_cmd(
        task: Annotated[str, typer.Argument(help="Task name.")],
        args: Annotated[str, typer.Option("--args", help="Args as a JSON object.")] = "{}",
        queue: Annotated[str | None, typer.Option("--queue")] = None,
        delay: Annotated[float | None, typer.Option("--delay", help="Seconds from now.")]
        = None,
        priority: Annotated[int | None, typer.Option("--priority",
                                                      help="Lower runs first.")] = None,
        unique_key: Annotated[str | None, typer.Option("--unique-key")] = None,
        max_attempts: Annotated[int | None, typer.Option("--max-attempts", min=1)] = None,
        app_path: AppPath = None,
        dsn: Dsn = None,
        schema: Schema = None,
        as_json: Json = False,
    ) -> None:
        """Enqueue TASK. Without --app the task name is not checked (a worker that
        does not know it dead-letters the job with reason unknown_task)."""
        try:
            payload = json.loads(args)
        except json.JSONDecodeError as exc:
            raise fail(f"--args is not valid JSON: {exc}") from None
        if not isinstance(payload, dict):
            raise fail(f"--args must be a JSON object, got {type(payload).__name__}")
        jq = load_app(app_path, dsn, schema) if app_path else plain_app(dsn, schema)
        with jq.connect() as conn:  # commits on leaving the block
            job_id = jq.enqueue(task, payload, conn=conn, queue=queue, delay=delay,
                                priority=priority, unique_key=unique_key,
                                max_attempts=max_attempts, strict=bool(app_path))
        if as_json:
            emit_json({"id": job_id, "task": task})
        else:
            typer.echo(f"enqueued job {job_id} ({task})")
