"""The per-queue overview: depth, age, throughput and who serves each queue.

One statement (``queue_overview``) feeds ``jobqueue stats`` (and its
``--watch``), the queue gauges of the metrics endpoint and ``jobqueue doctor``.
Throughput comes from ``job_counts``, the 10-second outcome buckets that the
workers' completers add to with each batch of acks.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import psycopg

from jobqueue import sql

#: A worker whose heartbeat is older than this does not count as serving a queue
#: (the default worker timeout, after which the fleet reaps it).
DEFAULT_WORKER_TIMEOUT = 30.0


@dataclass(frozen=True)
class QueueOverview:
    """One queue as ``jobqueue stats`` shows it.

    ``queued`` is the number of jobs ready to run now (the name ``stats --json``
    has always used); ``*_1m`` count outcomes over the last 50 to 60 seconds
    (``span_seconds`` says exactly how long).
    """

    queue: str
    queued: int
    scheduled: int
    running: int
    dead: int
    oldest_age: float | None
    succeeded_1m: int
    retried_1m: int
    dead_1m: int
    span_seconds: float
    paused: bool
    workers: int

    @property
    def per_second(self) -> float:
        """Finished attempts (succeeded, retried or dead) per second over the last minute."""
        done = self.succeeded_1m + self.retried_1m + self.dead_1m
        return done / self.span_seconds if self.span_seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "per_second": round(self.per_second, 3)}


def _row(row: tuple[Any, ...]) -> QueueOverview:
    (queue, ready, scheduled, running, dead, oldest, ok, retried, died, span, paused,
     workers) = row
    return QueueOverview(queue=queue, queued=int(ready), scheduled=int(scheduled),
                         running=int(running), dead=int(dead), oldest_age=oldest,
                         succeeded_1m=int(ok), retried_1m=int(retried), dead_1m=int(died),
                         span_seconds=float(span), paused=bool(paused), workers=int(workers))


def queue_overview(conn: psycopg.Connection[Any], schema: str,
                   worker_timeout: float = DEFAULT_WORKER_TIMEOUT) -> list[QueueOverview]:
    rows = conn.execute(sql.query("queue_overview", schema),
                        {"worker_timeout": worker_timeout}).fetchall()
    return [_row(r) for r in rows]


async def queue_overview_async(conn: psycopg.AsyncConnection[Any], schema: str,
                               worker_timeout: float = DEFAULT_WORKER_TIMEOUT,
                               ) -> list[QueueOverview]:
    cur = await conn.execute(sql.query("queue_overview", schema),
                             {"worker_timeout": worker_timeout})
    return [_row(r) for r in await cur.fetchall()]
