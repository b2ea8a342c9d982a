"""What a queue's ``max_ready`` costs an enqueue, at two backlogs: ``python -m benchmarks
backpressure``.

A schema of its own gets ``backlog`` ready jobs in queue ``limited`` (by INSERT
... SELECT: the harness writes them, not jobqueue), whose ``max_ready`` is
``max_ready`` with the default policy (warn: every enqueue goes in). Then
single enqueues, each in its own transaction on one connection, are timed
into ``limited`` and into ``free`` (no limit), alternated in rounds, in the
same run. The check counts at most ``max_ready`` entries of the ready index,
so its cost must not grow with the backlog: the run is made at 10k and 1M.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import psycopg
from psycopg import sql

from benchmarks.common import drop_schema, fresh_schema


def _fill(dsn: str, schema: str, backlog: int) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL(
            "INSERT INTO {} (queue, task, args) SELECT 'limited', 'noop', '{{}}' "
            "FROM generate_series(1, %s)").format(sql.Identifier(schema, "jobs")), (backlog,))
        conn.execute(sql.SQL("VACUUM ANALYZE {}").format(sql.Identifier(schema, "jobs")))


def _per_enqueue_us(app: Any, conn: psycopg.Connection[Any], queue: str, n: int) -> float:
    started = time.perf_counter()
    for _ in range(n):
        with conn.transaction():
            app.enqueue("noop", {}, conn=conn, queue=queue, strict=False)
    return (time.perf_counter() - started) / n * 1e6


def measure(dsn: str, backlogs: tuple[int, ...] = (10_000, 1_000_000), max_ready: int = 5_000,
            jobs: int = 300, rounds: int = 5) -> dict[str, Any]:
    from jobqueue import JobQueue

    found: dict[str, Any] = {"max_ready": max_ready, "jobs_per_round": jobs,
                             "rounds": rounds, "backlogs": {}}
    for backlog in backlogs:
        schema = fresh_schema(dsn)
        try:
            _fill(dsn, schema, backlog)
            app = JobQueue(dsn, schema=schema)
            app.queues.set_limits("limited", max_ready=max_ready)
            limited, free = [], []
            with psycopg.connect(dsn, prepare_threshold=None) as conn:
                _per_enqueue_us(app, conn, "free", 50)  # warm up
                for _ in range(rounds):
                    limited.append(_per_enqueue_us(app, conn, "limited", jobs))
                    free.append(_per_enqueue_us(app, conn, "free", jobs))
            app.close()
            found["backlogs"][backlog] = {
                "limited_us": round(statistics.median(limited), 1),
                "free_us": round(statistics.median(free), 1),
                "check_us": round(statistics.median(limited) - statistics.median(free), 1)}
        finally:
            drop_schema(dsn, schema)
    return found
