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
from typing import Annotated, Any

import typer

from benchmarks.common import drop_schema, fresh_schema
from benchmarks.targets.jq import build_app

cli = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False)


class _Count:
    def __init__(self) -> None:
        self.n = 0

    def started(self, seq: int) -> None:
        self.n += 1


def _count_calls() -> dict[str, int]:
    """Count claims (and the jobs they brought) and ack flushes, by wrapping the
    methods of this process's classes: how many round trips the drain took."""
    from jobqueue.worker.completer import Completer
    from jobqueue.worker.fetcher import Fetcher

    calls = {"claims": 0, "claimed": 0, "flushes": 0}
    claim, flush = Fetcher.claim, Completer.flush

    async def counted_claim(self: Any, limit: int) -> Any:
        jobs = await claim(self, limit)
        calls["claims"] += 1
        calls["claimed"] += len(jobs)
        return jobs

    async def counted_flush(self: Any) -> None:
        calls["flushes"] += 1
        await flush(self)

    Fetcher.claim = counted_claim  # type: ignore[method-assign]
    Completer.flush = counted_flush  # type: ignore[method-assign]
    return calls


@cli.command()
def run(
    dsn: Annotated[str, typer.Option("--dsn", envvar="JOBQUEUE_DSN")],
    jobs: Annotated[int, typer.Option("--jobs", min=1)] = 100_000,
    concurrency: Annotated[int, typer.Option("--concurrency", min=1)] = 200,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 100,
    handler: Annotated[str, typer.Option("--handler", help="async or sync")] = "async",
    option: Annotated[list[str] | None, typer.Option(
        "--option", help="Another WorkerConfig field, as NAME=VALUE (repeatable)")] = None,
) -> None:
    """Store JOBS no-op jobs in a fresh schema and drain them with one burst worker."""
    import psycopg
    from psycopg import sql

    from benchmarks.common import vacuum_analyze
    from benchmarks.targets.raw import COPY, QUEUE, _args
    from jobqueue.log import configure
    from jobqueue.worker import WorkerConfig

    schema = fresh_schema(dsn)
    task = {"async": "noop_async", "sync": "noop_sync"}[handler]
    try:
        with psycopg.connect(dsn) as conn, conn.cursor() as cur, \
                cur.copy(sql.SQL(COPY).format(schema=sql.Identifier(schema))) as copy:
            for seq in range(jobs):
                copy.write_row((QUEUE, task, _args(seq)))
        vacuum_analyze(dsn, sql.Identifier(schema, "jobs"))
        configure(level="warning", force=True)
        calls = _count_calls()
        count = _Count()
        app = build_app(dsn, schema, count)
        extra = {name: json.loads(value) for name, _, value in
                 (o.partition("=") for o in option or [])}
        worker = app.worker(WorkerConfig(queues=(QUEUE,), concurrency=concurrency,
                                          batch_size=batch_size, burst=True,
                                          handle_signals=False, **extra))
        started, cpu = time.perf_counter(), time.process_time()
        worker.run()
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
        app.close()
        if count.n != jobs:
            typer.echo(f"error: {jobs} jobs, the handler ran {count.n} times", err=True)
            raise typer.Exit(1)
        typer.echo(json.dumps({"jobs": jobs, "seconds": round(elapsed, 3),
                               "jobs_per_second": round(jobs / elapsed, 1),
                               "worker_cpu_us_per_job": round(cpu / jobs * 1e6, 1),
                               "calls": calls, "stats": worker.stats}))
    finally:
        drop_schema(dsn, schema)


# Where a sample goes: the first rule whose pattern matches any frame of its
# stack. Rules are ordered from the most specific (a logging call made from the
# claim counts as logging) to the most general (whatever else runs under the
# worker's event loop is the loop's own scheduling).
RULES: list[tuple[str, re.Pattern[str]]] = [
    ("logging (structlog)", re.compile(r"\(structlog/")),
    ("metrics", re.compile(r"\(jobqueue/metrics\.py")),
    ("lifecycle (context binding, log calls)", re.compile(r"^Lifecycle\.")),
    ("handler (the no-op)", re.compile(r"^(_Count\.started|.*noop_(a)?sync) ")),
    ("thread hop (run_in_executor, futures, copy_context)",
     re.compile(r"(^Executor\._in_thread |run_in_executor|call_soon_threadsafe|"
                r"\(concurrent/futures/|^_chain_future|^_copy_future_state|"
                r"^Future\.set_result|_set_state)")),
    ("claim: executing the SQL (psycopg)", re.compile(r"^AsyncCursor\.execute .*"
                                                     r"|^AsyncConnection\.execute ")),
    ("completer (ack flush + outcome buffering)", re.compile(r"^Completer\.")),
    ("executor: submit (JobContext, create_task)", re.compile(r"^Executor\.submit ")),
    ("executor: done callback (slot freed, fetcher woken)",
     re.compile(r"^Executor\._done ")),
    ("executor: the job's coroutine (_run/_call)", re.compile(r"^Executor\._(run|call) ")),
    ("other services (heartbeat, maintenance, listener, pool)",
     re.compile(r"^(Heartbeat|Maintenance|Listener|Scheduler|SystemdService|"
                r"AsyncConnectionPool)\.")),
    ("fetcher loop", re.compile(r"^Fetcher\.")),
]
# Within the claim, what the rows cost once they are back.
CLAIM = re.compile(r"^Fetcher\.claim ")
DECODE = re.compile(r"(fetchall|_JsonLoader|json/|__create_fn__|listcomp)")
IDLE = re.compile(r"^(EpollSelector\.select|_worker|Condition\.wait|Event\.wait|"
                  r"SimpleQueue\.get) ")


def classify(frames: list[str]) -> str:
    if IDLE.match(frames[-1]):
        return "(idle: waiting on the database / a queue)"
    if any(CLAIM.match(f) for f in frames):
        if any(DECODE.search(f) for f in frames):
            return "claim: decoding rows (json, ClaimedJob)"
        return "claim: executing the SQL (psycopg)"
    for name, pattern in RULES:
        if any(pattern.search(f) for f in frames):
            return name
    return "asyncio event loop (scheduling, callbacks)"


@cli.command()
def summarize(
    path: Path,
    jobs: Annotated[int, typer.Option("--jobs", min=1)] = 100_000,
    rate: Annotated[int, typer.Option("--rate", min=1, help="py-spy's --rate")] = 500,
) -> None:
    """Attribute py-spy's collapsed stacks (--format raw) to the parts of the worker."""
    buckets: Counter[str] = Counter()
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        frames = stack.split(";")
        # Only the worker: its event loop and the threads of its pool.
        if not any(f.startswith("Worker.run (jobqueue/") or
                   f.startswith("Executor._in_thread ") for f in frames) and \
                not (frames[-1].startswith("_worker ") and len(frames) <= 5):
            continue
        buckets[classify(frames)] += int(n)
    busy = sum(n for name, n in buckets.items() if not name.startswith("(idle"))
    if not busy:
        typer.echo("no samples", err=True)
        raise typer.Exit(1)
    per_sample_us = 1e6 / rate
    typer.echo(f"{busy} busy samples at {rate} Hz = {busy / rate:.2f} s; "
               f"{busy * per_sample_us / jobs:.1f} us per job over {jobs:,} jobs")
    typer.echo(f"{'where':<56} {'share':>6} {'us/job':>7}")
    for name, count in buckets.most_common():
        share = "" if name.startswith("(idle") else f"{count / busy:>6.1%}"
        typer.echo(f"{name:<56} {share:>6} {count * per_sample_us / jobs:>7.2f}")


if __name__ == "__main__":
    sys.exit(cli())
