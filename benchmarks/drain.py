"""Drain rate of one worker on N no-op jobs, next to the raw SQL floor.

Each phase gets a freshly migrated schema and N jobs enqueued with
``enqueue_many`` in batches of 1,000. The library phases then time one
``Worker(burst=True)`` from ``run()`` until it returns with the queue drained,
once with a sync no-op handler (thread pool) and once with an async one. The
raw phase times the least work any Postgres queue must do for the same jobs:
a loop on one connection claiming 100 rows with ``UPDATE … FOR UPDATE SKIP
LOCKED`` and deleting them by id, with no handler, no acks batching, no
heartbeat — so "library / raw" says how much of the floor the worker reaches.

Every phase checks its count: each job ran exactly once (handler calls = N)
and nothing is left in ``jobs`` or ``dead_jobs``.

    python -m benchmarks.drain --dsn postgresql://postgres@127.0.0.1:5432/test
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import psycopg
from psycopg import sql

from jobqueue import JobQueue
from jobqueue.db import migrate
from jobqueue.log import configure
from jobqueue.worker import Worker, WorkerConfig

ENQUEUE_BATCH = 1_000
RAW_BATCH = 100
QUEUE = "default"

# The floor: the same claim shape as the worker's (ready index order, SKIP
# LOCKED, lease columns set), then a delete of exactly the claimed ids.
RAW_CLAIM = """
UPDATE {schema}.jobs AS j
SET state = 'running', attempts = j.attempts + 1, locked_by = %(worker)s,
    locked_until = now() + interval '30 seconds'
FROM (
    SELECT id FROM {schema}.jobs
    WHERE queue = %(queue)s AND state = 'queued' AND run_at <= now()
    ORDER BY priority, run_at, id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
) AS claimed
WHERE j.id = claimed.id
RETURNING j.id
"""
RAW_DELETE = "DELETE FROM {schema}.jobs WHERE id = ANY(%(ids)s) AND locked_by = %(worker)s"


@dataclass
class Phase:
    name: str
    jobs: int
    enqueue_seconds: float
    drain_seconds: float

    @property
    def rate(self) -> float:
        return self.jobs / self.drain_seconds


class Counter:
    """Handler calls, from the worker's threads or its event loop."""

    def __init__(self) -> None:
        self.value = 0
        self._lock = threading.Lock()

    def add(self) -> None:
        with self._lock:
            self.value += 1


def fresh_schema(dsn: str) -> str:
    schema = f"jqbench_{uuid.uuid4().hex[:10]}"
    migrate.upgrade(dsn, schema)
    return schema


def drop_schema(dsn: str, schema: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


def build_app(dsn: str, schema: str, calls: Counter) -> JobQueue:
    app = JobQueue(dsn, schema=schema)

    @app.task(queue=QUEUE)
    def noop_sync(i: int) -> None:
        calls.add()

    @app.task(queue=QUEUE)
    async def noop_async(i: int) -> None:
        calls.add()

    return app


def enqueue(app: JobQueue, task: str, n: int) -> float:
    started = time.perf_counter()
    for first in range(0, n, ENQUEUE_BATCH):
        app.enqueue_many([(task, {"i": i}) for i in range(first, min(n, first + ENQUEUE_BATCH))])
    return time.perf_counter() - started


def settle(dsn: str, schema: str) -> None:
    # Every phase starts from the same state: statistics fresh, no autovacuum
    # of the bulk insert landing in the middle of the timed part.
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("VACUUM ANALYZE {}").format(sql.Identifier(schema, "jobs")))


def leftovers(dsn: str, schema: str) -> tuple[int, int]:
    with psycopg.connect(dsn) as conn:
        counts = []
        for table in ("jobs", "dead_jobs"):
            row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(
                sql.Identifier(schema, table))).fetchone()
            counts.append(int(row[0]) if row else -1)
    return counts[0], counts[1]


def check(name: str, dsn: str, schema: str, expected: int, ran: int) -> None:
    jobs, dead = leftovers(dsn, schema)
    if (ran, jobs, dead) != (expected, 0, 0):
        raise SystemExit(f"{name}: {expected} jobs in, {ran} ran, {jobs} left in jobs, "
                         f"{dead} dead - the benchmark result is not valid")


def worker_phase(dsn: str, n: int, concurrency: int, task: str) -> Phase:
    schema = fresh_schema(dsn)
    calls = Counter()
    app = build_app(dsn, schema, calls)
    try:
        enqueue_seconds = enqueue(app, task, n)
        settle(dsn, schema)
        worker = Worker(app, WorkerConfig(queues=(QUEUE,), burst=True, concurrency=concurrency,
                                          handle_signals=False))
        started = time.perf_counter()
        worker.run()
        elapsed = time.perf_counter() - started
        check(task, dsn, schema, n, calls.value)
        return Phase(task, n, enqueue_seconds, elapsed)
    finally:
        app.close()
        drop_schema(dsn, schema)


def raw_phase(dsn: str, n: int) -> Phase:
    schema = fresh_schema(dsn)
    app = build_app(dsn, schema, Counter())
    try:
        enqueue_seconds = enqueue(app, "noop_sync", n)
        settle(dsn, schema)
        claim = sql.SQL(RAW_CLAIM).format(schema=sql.Identifier(schema))
        delete = sql.SQL(RAW_DELETE).format(schema=sql.Identifier(schema))
        params = {"worker": "raw", "queue": QUEUE, "limit": RAW_BATCH}
        done = 0
        with psycopg.connect(dsn, autocommit=True) as conn:
            # Like the worker's own connections: claims and acks need no WAL flush.
            conn.execute("SET synchronous_commit = off")
            started = time.perf_counter()
            while True:
                ids = [r[0] for r in conn.execute(claim, params).fetchall()]
                if not ids:
                    break
                conn.execute(delete, {"ids": ids, "worker": "raw"})
                done += len(ids)
            elapsed = time.perf_counter() - started
        check("raw", dsn, schema, n, done)
        return Phase("raw SQL floor", n, enqueue_seconds, elapsed)
    finally:
        app.close()
        drop_schema(dsn, schema)


def startup_overhead(dsn: str, concurrency: int) -> float:
    """Seconds one burst worker spends starting and stopping with nothing to do."""
    schema = fresh_schema(dsn)
    app = build_app(dsn, schema, Counter())
    try:
        worker = Worker(app, WorkerConfig(queues=(QUEUE,), burst=True, concurrency=concurrency,
                                          handle_signals=False))
        started = time.perf_counter()
        worker.run()
        return time.perf_counter() - started
    finally:
        app.close()
        drop_schema(dsn, schema)


def server_version(dsn: str) -> str:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SHOW server_version").fetchone()
    return str(row[0]) if row else "?"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--dsn", default=os.environ.get("JOBQUEUE_DSN"),
                        help="PostgreSQL DSN [default: $JOBQUEUE_DSN]")
    parser.add_argument("--jobs", type=int, default=20_000, help="jobs per phase")
    parser.add_argument("--concurrency", type=int, default=10, help="worker concurrency")
    parser.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args(argv)
    if not args.dsn:
        parser.error("--dsn (or $JOBQUEUE_DSN) is required")
    if args.jobs < 1 or args.concurrency < 1:
        parser.error("--jobs and --concurrency must be >= 1")
    configure(level="warning", force=True)  # per-job logs are not what is measured

    phases: list[Callable[[], Phase]] = [
        lambda: raw_phase(args.dsn, args.jobs),
        lambda: worker_phase(args.dsn, args.jobs, args.concurrency, "noop_sync"),
        lambda: worker_phase(args.dsn, args.jobs, args.concurrency, "noop_async"),
    ]
    results = [phase() for phase in phases]
    overhead = startup_overhead(args.dsn, args.concurrency)
    raw = results[0]
    report: dict[str, Any] = {
        "server_version": server_version(args.dsn),
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
        "jobs": args.jobs,
        "concurrency": args.concurrency,
        "worker_start_stop_seconds": round(overhead, 3),
        "phases": [{**asdict(p), "jobs_per_second": round(p.rate, 1),
                    "enqueue_jobs_per_second": round(p.jobs / p.enqueue_seconds, 1),
                    "ratio_to_raw": round(p.rate / raw.rate, 3)} for p in results],
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"drain of {args.jobs:,} no-op jobs by one worker (concurrency {args.concurrency}), "
          f"PostgreSQL {report['server_version']}, Python {report['python']}, "
          f"{report['cpus']} CPUs")
    print(f"{'phase':<15} {'jobs/s':>9} {'drain s':>8} {'vs raw':>7} {'enqueue jobs/s':>15}")
    for p in report["phases"]:
        print(f"{p['name']:<15} {p['jobs_per_second']:>9,.0f} {p['drain_seconds']:>8.2f} "
              f"{p['ratio_to_raw']:>7.2f} {p['enqueue_jobs_per_second']:>15,.0f}")
    print(f"(worker drain times include starting and stopping the worker: "
          f"{overhead:.2f}s with an empty queue)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
