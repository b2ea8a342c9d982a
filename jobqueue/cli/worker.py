"""``jobqueue worker``: run a worker process for an app's tasks."""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

from jobqueue.cli.options import AppPath, Dsn, Schema, load_app
from jobqueue.cli.output import fail
from jobqueue.worker import Worker, WorkerConfig


def register(app: typer.Typer) -> None:
    @app.command("worker")
    def worker_cmd(
        app_path: AppPath = None,
        dsn: Dsn = None,
        schema: Schema = None,
        queues: Annotated[str | None, typer.Option(
            "--queues", "-q", help="Comma-separated queues. [default: the app's default queue]")]
        = None,
        concurrency: Annotated[int, typer.Option("--concurrency", "-c", min=1)] = 10,
        burst: Annotated[bool, typer.Option("--burst", help="Drain ready jobs, then exit 0.")]
        = False,
        shutdown_timeout: Annotated[float, typer.Option(
            "--shutdown-timeout", help="Grace for in-flight jobs on SIGTERM, seconds.")] = 30.0,
        poll_interval: Annotated[float, typer.Option(
            "--poll-interval", help="Fallback poll when no NOTIFY arrives, seconds.")] = 1.0,
        batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 100,
    ) -> None:
        """Run a worker until SIGTERM/SIGINT (or, with --burst, until the queues are empty)."""
        if not app_path:
            raise fail("--app is required (or set JOBQUEUE_APP), e.g. --app myproject.jobs:app")
        queue = load_app(app_path, dsn, schema)
        names = tuple(q.strip() for q in queues.split(",") if q.strip()) if queues else None
        config = WorkerConfig(
            queues=names or (queue.default_queue,), concurrency=concurrency, burst=burst,
            shutdown_timeout=shutdown_timeout, poll_interval=poll_interval,
            batch_size=batch_size)
        worker = Worker(queue, config)
        worker.run()
        if worker.abandoned_threads:
            # Sync handlers still running past the grace: their jobs are already
            # released, so leave now instead of waiting for the threads.
            sys.stderr.flush()
            os._exit(0)
