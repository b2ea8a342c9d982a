"""Profile one jobqueue worker draining no-op jobs, and say where the time goes per job.

Two steps, so that the profiler sees only the worker::

    py-spy record --rate 500 --format raw -o /tmp/drain.txt -- \\
        python -m benchmarks.profile run --dsn postgresql://postgres@127.0.0.1:5432/jq_bench \\
        --jobs 100000
    python -m benchmarks.profile summarize /tmp/drain.txt --jobs 100000 --rate 500

``run`` stores the jobs (COPY, not profiled in any way that matters: the
summary only counts samples under the worker), then drains them with one
``Worker(burst=True)`` in this process and prints the rate. ``summarize``
reads py-spy's collapsed stacks and attributes each sample to the innermost
jobqueue function on its stack (or to the handler, the event loop, psycopg,
or structlog), then converts samples into microseconds per job.
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Annotated

import typer

from benchmarks.common import drop_schema, fresh_schema
from benchmarks.targets.jq import build_app

cli = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False)


class _Count:
    def __init__(self) -> None:
        self.n = 0

    def started(self, seq: int) -> None:
        self.n += 1


@cli.command()
def run(
    dsn: Annotated[str, typer.Option("--dsn", envvar="JOBQUEUE_DSN")],
    jobs: Annotated[int, typer.Option("--jobs", min=1)] = 100_000,
    concurrency: Annotated[int, typer.Option("--concurrency", min=1)] = 100,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 100,
    handler: Annotated[str, typer.Option("--handler", help="async or sync")] = "async",
) -> None:
    """Store JOBS no-op jobs in a fresh schema and drain them with one burst worker."""
    import psycopg
    from psycopg import sql

    from benchmarks.common import vacuum_analyze
    from benchmarks.targets.raw import COPY, QUEUE, _args
    from jobqueue.log import configure
    from jobqueue.worker import Worker, WorkerConfig

    schema = fresh_schema(dsn)
    task = {"async": "noop_async", "sync": "noop_sync"}[handler]
    try:
        with psycopg.connect(dsn) as conn, conn.cursor() as cur, \
                cur.copy(sql.SQL(COPY).format(schema=sql.Identifier(schema))) as copy:
            for seq in range(jobs):
                copy.write_row((QUEUE, task, _args(seq)))
        vacuum_analyze(dsn, sql.Identifier(schema, "jobs"))
        configure(level="warning", force=True)
        count = _Count()
        app = build_app(dsn, schema, count)
        worker = Worker(app, WorkerConfig(queues=(QUEUE,), concurrency=concurrency,
                                          batch_size=batch_size, burst=True,
                                          handle_signals=False))
        started = time.perf_counter()
        worker.run()
        elapsed = time.perf_counter() - started
        app.close()
        if count.n != jobs:
            typer.echo(f"error: {jobs} jobs, the handler ran {count.n} times", err=True)
            raise typer.Exit(1)
        typer.echo(json.dumps({"jobs": jobs, "seconds": round(elapsed, 3),
                               "jobs_per_second": round(jobs / elapsed, 1),
                               "stats": worker.stats}))
    finally:
        drop_schema(dsn, schema)


# Where a sample goes: the innermost frame on its stack that matches one of
# these, checked from the leaf up. Order within a frame does not matter.
BUCKETS: list[tuple[str, re.Pattern[str]]] = [
    ("handler (probe)", re.compile(r"^(started|noop_async|noop_sync) \(.*benchmarks")),
    ("structlog", re.compile(r"\(.*structlog/")),
    ("metrics", re.compile(r"\(.*jobqueue/metrics\.py")),
]
JOBQUEUE = re.compile(r"^(?P<fn>[\w<>.]+) \((?P<file>[^:]*jobqueue/[\w/]+\.py):\d+\)$")
LEAF_GROUPS: list[tuple[str, re.Pattern[str]]] = [
    ("psycopg (protocol, row decoding)", re.compile(r"\(.*psycopg")),
    ("asyncio event loop", re.compile(r"\(.*asyncio/")),
    ("concurrent.futures / threading", re.compile(r"\(.*(concurrent/futures|threading\.py)")),
    ("json", re.compile(r"\(.*json/")),
]


def classify(frames: list[str]) -> str:
    for frame in reversed(frames):
        for name, pattern in BUCKETS:
            if pattern.search(frame):
                return name
        match = JOBQUEUE.match(frame)
        if match:
            module = Path(match["file"]).stem
            return f"jobqueue {module}.{match['fn']}"
    for frame in reversed(frames):
        for name, pattern in LEAF_GROUPS:
            if pattern.search(frame):
                return f"(outside jobqueue) {name}"
    return "(outside jobqueue) other"


@cli.command()
def summarize(
    path: Path,
    jobs: Annotated[int, typer.Option("--jobs", min=1)] = 100_000,
    rate: Annotated[int, typer.Option("--rate", min=1, help="py-spy's --rate")] = 500,
    top: Annotated[int, typer.Option("--top", min=1)] = 30,
    under: Annotated[str, typer.Option("--under", help="only samples under this frame")] =
        "run_async",
) -> None:
    """Attribute py-spy's collapsed stacks (--format raw) to jobqueue functions."""
    buckets: Counter[str] = Counter()
    psycopg_by_caller: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        frames = stack.split(";")
        if under and not any(f.startswith(under + " ") for f in frames) and \
                not any("jobqueue/" in f or "concurrent/futures" in f for f in frames):
            continue
        count = int(n)
        total += count
        name = classify(frames)
        buckets[name] += count
        if any("psycopg" in f for f in frames):
            caller = next((JOBQUEUE.match(f)["fn"] for f in reversed(frames)  # type: ignore[index]
                           if JOBQUEUE.match(f)), "?")
            psycopg_by_caller[caller] += count
    if not total:
        typer.echo("no samples", err=True)
        raise typer.Exit(1)
    per_sample_us = 1e6 / rate
    typer.echo(f"{total} samples at {rate} Hz = {total / rate:.2f} s of worker CPU; "
               f"{total * per_sample_us / jobs:.1f} us per job over {jobs:,} jobs")
    typer.echo(f"{'where':<58} {'share':>6} {'us/job':>7}")
    for name, count in buckets.most_common(top):
        typer.echo(f"{name:<58} {count / total:>6.1%} {count * per_sample_us / jobs:>7.2f}")
    typer.echo("\npsycopg time by the innermost jobqueue caller:")
    for name, count in psycopg_by_caller.most_common(10):
        typer.echo(f"  {name:<56} {count / total:>6.1%} {count * per_sample_us / jobs:>7.2f}")


if __name__ == "__main__":
    sys.exit(cli())
