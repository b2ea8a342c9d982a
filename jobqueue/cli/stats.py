"""``jobqueue stats``: depth, age and throughput of every queue, once or ``--watch``."""

from __future__ import annotations

import contextlib
import json
import sys
import time
from datetime import datetime, timezone
from typing import Annotated, Any

import psycopg
import typer

from jobqueue.app import JobQueue
from jobqueue.cli.options import Dsn, Json, Schema, plain_app
from jobqueue.cli.output import age, emit_json, table
from jobqueue.errors import DatabaseError
from jobqueue.rows import Progress, QueueOverview, RunningJob

HEADERS = ["queue", "ready", "scheduled", "running", "dead", "oldest ready", "jobs/s", "paused"]
# Clear the screen and go home: a refreshing table, like top or watch(1).
CLEAR = "\x1b[H\x1b[2J"


#: Running jobs that report progress, listed under the table at most.
PROGRESS_ROWS = 10


def render(rows: list[QueueOverview], running: list[RunningJob] | None = None) -> str:
    if not rows:
        return "no jobs: every queue is empty"
    text = table(HEADERS, [
        [r.queue, r.queued, r.scheduled, r.running, r.dead, age(r.oldest_age),
         f"{r.per_second:.1f}", "yes" if r.paused else "no"] for r in rows])
    reporting = [(job, job.report) for job in running or [] if job.report is not None]
    if reporting:
        text += "\n\nrunning, with progress:\n" + table(
            ["job", "task", "queue", "progress", "note", "worker"],
            [[job.id, job.task, job.queue, _progress(p), p.note, job.worker]
             for job, p in reporting[:PROGRESS_ROWS]])
    return text


def _progress(p: Progress) -> str:
    if p.total:
        return f"{p.done:g}/{p.total:g} ({100 * p.done / p.total:.0f}%)"
    return f"{p.done:g}"


def read(jq: JobQueue, conn: psycopg.Connection[Any]) -> list[QueueOverview]:
    # The store checks the schema first: "not migrated: run jobqueue migrate", not a SQL error.
    return jq.stats(conn)


def register(app: typer.Typer) -> None:
    @app.command("stats")
    def stats_cmd(
        dsn: Dsn = None,
        schema: Schema = None,
        as_json: Json = False,
        watch: Annotated[bool, typer.Option(
            "--watch", "-w", help="Refresh until Ctrl-C (with --json: one JSON line each time).")]
        = False,
        interval: Annotated[float, typer.Option(
            "--interval", "-n", min=0.1, help="Seconds between refreshes with --watch.")] = 2.0,
        count: Annotated[int | None, typer.Option(
            "--count", min=1, help="With --watch: stop after this many refreshes.")] = None,
    ) -> None:
        """Per queue: ready, scheduled, running and dead jobs, the oldest ready job's age,
        finished jobs per second over the last minute, and whether it is paused."""
        jq = plain_app(dsn, schema)
        if not watch:
            with jq.connect() as conn:
                rows = read(jq, conn)
                running = [] if as_json else jq.running(limit=100, conn=conn)
            if as_json:
                emit_json([r.as_dict() for r in rows])
            else:
                typer.echo(render(rows, running))
            return
        with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how a watch ends
            _watch(jq, as_json, interval, count)


def _watch(jq: JobQueue, as_json: bool, interval: float, count: int | None) -> None:
    tty = sys.stdout.isatty()
    conn: psycopg.Connection[Any] | None = None
    shown = 0
    try:
        while True:
            now = datetime.now(timezone.utc)
            try:
                if conn is None or conn.closed:
                    conn = jq.connect()
                    conn.autocommit = True  # a watch must not hold a transaction open
                rows: list[QueueOverview] | None = read(jq, conn)
                error = None
            except DatabaseError as exc:
                if not str(exc).startswith("database unavailable"):
                    raise
                # Keep watching through a restart or a network blip.
                rows, error = None, str(exc).removeprefix("database unavailable: ")
                if conn is not None:
                    conn.close()
                    conn = None
            if as_json:
                line: dict[str, Any] = {"at": now.isoformat()}
                line |= {"error": error} if rows is None else \
                    {"queues": [r.as_dict() for r in rows]}
                typer.echo(json.dumps(line, default=str))
            else:
                head = (f"jobqueue stats: schema {jq.schema}, {now:%H:%M:%S} UTC, "
                        f"every {interval:g}s (Ctrl-C to stop)")
                body = f"database unavailable: {error}" if rows is None else render(rows)
                typer.echo(f"{CLEAR if tty else ''}{head}\n\n{body}\n")
            shown += 1
            if count is not None and shown >= count:
                return
            time.sleep(interval)  # the refresh period a person asked for
    finally:
        if conn is not None:
            conn.close()
