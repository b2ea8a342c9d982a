"""``jobqueue worker``: run a worker process for an app's tasks."""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

from jobqueue.cli.options import AppPath, Dsn, ListenDsn, Pooler, Schema, load_app
from jobqueue.cli.output import fail
from jobqueue.cli.supervise import child_command, supervised
from jobqueue.cli.supervise import supervise as run_supervisor
from jobqueue.config import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_CONCURRENCY,
    DEFAULT_POLL_INTERVAL,
    DEFAULT_SHUTDOWN_TIMEOUT,
)
from jobqueue.errors import ConfigError
from jobqueue.protocol import RECYCLE_EXIT_CODE
from jobqueue.worker import WorkerConfig


def parse_queues(text: str) -> tuple[tuple[str, ...], dict[str, float] | None]:
    """``a:3,b:1,c`` -> the names and their weights (None when no name has one).

    A name without a weight weighs 1 once another name has one.
    """
    names: list[str] = []
    weights: dict[str, float] = {}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        head, sep, weight = item.rpartition(":")
        name = head.strip() if sep else item
        if not name:
            raise ConfigError(f"--queues: {item!r} has no queue name")
        if sep:
            try:
                value = float(weight)
            except ValueError:
                raise ConfigError(f"--queues: weight {weight!r} of {name!r} is not a number") \
                    from None
            if not 0 < value < float("inf"):
                raise ConfigError(f"--queues: weight of {name!r} must be > 0, got {weight!r}")
            weights[name] = value
        if name not in names:
            names.append(name)
    return tuple(names), weights or None


def register(app: typer.Typer) -> None:
    @app.command("worker")
    def worker_cmd(
        app_path: AppPath = None,
        dsn: Dsn = None,
        schema: Schema = None,
        pooler: Pooler = None,
        listen_dsn: ListenDsn = None,
        queues: Annotated[str | None, typer.Option(
            "--queues", "-q",
            help="Comma-separated queues, each optionally weighted: a:3,b:1 takes a first "
                 "three times as often as b. (default: the app's default queue)")]
        = None,
        concurrency: Annotated[int, typer.Option(
            "--concurrency", "-c", min=1, help="Handlers running at once.")] = DEFAULT_CONCURRENCY,
        prefetch: Annotated[int | None, typer.Option(
            "--prefetch", min=0,
            help="Claimed jobs held ready beyond the running ones (leased, heartbeated, "
                 "released at shutdown); 0: claim only for free slots. "
                 "(default: 4 x concurrency, more for short jobs)")] = None,
        burst: Annotated[bool, typer.Option("--burst", help="Drain ready jobs, then exit 0.")]
        = False,
        shutdown_timeout: Annotated[float, typer.Option(
            "--shutdown-timeout", help="Grace for in-flight jobs on SIGTERM, seconds.")]
        = DEFAULT_SHUTDOWN_TIMEOUT,
        poll_interval: Annotated[float, typer.Option(
            "--poll-interval", help="Fallback poll when no NOTIFY arrives, seconds.")]
        = DEFAULT_POLL_INTERVAL,
        batch_size: Annotated[int, typer.Option(
            "--batch-size", min=1, help="Most jobs one claim takes.")] = DEFAULT_BATCH_SIZE,
        metrics_port: Annotated[int | None, typer.Option(
            "--metrics-port", min=0, max=65535, envvar="JOBQUEUE_METRICS_PORT",
            help="Serve Prometheus metrics at http://ADDR:PORT/metrics.")] = None,
        metrics_addr: Annotated[str, typer.Option(
            "--metrics-addr", help="Address the metrics server binds.")] = "0.0.0.0",
        metrics_interval: Annotated[float, typer.Option(
            "--metrics-interval", min=0.1,
            help="How often the gauge leader reads queue depths, seconds.")] = 10.0,
        fair_every: Annotated[int, typer.Option(
            "--fair-every", min=0,
            help="Every Nth claim takes the oldest jobs whatever their priority "
                 "(0: never).")] = 10,
        processes: Annotated[int | None, typer.Option(
            "--processes", min=1,
            help="Child processes for executor=\"process\" tasks (default: one per CPU).")]
        = None,
        max_jobs_per_child: Annotated[int | None, typer.Option(
            "--max-jobs-per-child", min=1,
            help="Replace a process child after N jobs (and, with --supervise, this worker "
                 "after N jobs started).")] = None,
        max_memory: Annotated[float | None, typer.Option(
            "--max-memory", min=1,
            help="Replace a process child whose resident memory passed MB after a job (and, "
                 "with --supervise, this worker past MB).")] = None,
        supervise: Annotated[bool, typer.Option(
            "--supervise",
            help="Run the worker as a child process and start a fresh one when it recycles "
                 "itself (--max-jobs-per-child, --max-memory) or is killed.")] = False,
    ) -> None:
        """Run a worker until SIGTERM/SIGINT (or, with --burst, until the queues are empty)."""
        if not app_path:
            raise fail("--app is required (or set JOBQUEUE_APP), e.g. --app myproject.jobs:app")
        if supervise:
            raise typer.Exit(run_supervisor(child_command()))
        queue = load_app(app_path, dsn, schema, pooler, listen_dsn)
        names, weights = parse_queues(queues) if queues else ((), None)
        config = WorkerConfig(
            queues=names or (queue.default_queue,), concurrency=concurrency, prefetch=prefetch,
            burst=burst,
            shutdown_timeout=shutdown_timeout, poll_interval=poll_interval,
            batch_size=batch_size, metrics_port=metrics_port, metrics_addr=metrics_addr,
            metrics_interval=metrics_interval, queue_weights=weights, fair_every=fair_every,
            processes=processes, max_jobs_per_child=max_jobs_per_child, max_memory=max_memory,
            recycle=supervised())
        worker = queue.worker(config)
        worker.run()
        code = 0 if worker.recycled is None else RECYCLE_EXIT_CODE
        if worker.abandoned_threads:
            # Sync handlers still running past the grace: their jobs are already
            # released, so leave now instead of waiting for the threads.
            sys.stderr.flush()
            os._exit(code)
        if code:
            raise typer.Exit(code)
