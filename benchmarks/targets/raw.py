"""The raw SQL floor: the statements a minimal queue needs, with no library around them.

It runs on a freshly migrated jobqueue schema, so "library / floor" says how
much of what jobqueue's own table allows the library reaches. Variants:

- drain: one connection loops ``UPDATE ... FOR UPDATE SKIP LOCKED`` (100 rows,
  the ready index order, lease columns set) + ``DELETE`` of the claimed ids;
  ``synchronous_commit = off``, as the worker's own connections. No handler
  call beyond the probe, no batching of acks across claims, no heartbeat.
- enqueue-tx: ``INSERT`` of one row per transaction (``insert``), or the same
  with a ``pg_notify`` in the statement (``notify``).
- enqueue-one: the same two statements on one autocommit connection, each
  its own transaction, as ``enqueue()`` without ``conn`` commits its own.
- bulk: ``INSERT ... SELECT FROM unnest(arrays)`` (``unnest``) or
  ``COPY jobs (queue, task, args) FROM STDIN`` (``copy``), no ids returned.
- latency/soak: the worker LISTENs; producers INSERT + NOTIFY in one statement.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import psycopg
from psycopg import sql

from benchmarks.common import QUEUE, drop_schema, fresh_schema, scalar, vacuum_analyze
from benchmarks.targets import LatencySample, Target, paced

CHANNEL = "jqbench_raw"
TASK = "noop_async"

CLAIM = """
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
RETURNING j.id, (j.args ->> 'seq')::int
"""
DELETE = "DELETE FROM {schema}.jobs WHERE id = ANY(%(ids)s) AND locked_by = %(worker)s"
INSERT = "INSERT INTO {schema}.jobs (queue, task, args) VALUES (%(queue)s, %(task)s, %(args)s)"
INSERT_NOTIFY = """
WITH job AS (
    INSERT INTO {schema}.jobs (queue, task, args) VALUES (%(queue)s, %(task)s, %(args)s)
    RETURNING queue
)
SELECT pg_notify(%(channel)s, queue) FROM job
"""
UNNEST = """
INSERT INTO {schema}.jobs (queue, task, args)
SELECT %(queue)s, %(task)s, a FROM unnest(%(args)s::jsonb[]) AS a
"""
UNNEST_NOTIFY = UNNEST + ";"  # the soak's producer adds a NOTIFY statement after it
COPY = "COPY {schema}.jobs (queue, task, args) FROM STDIN"


def _q(text: str, schema: str) -> sql.Composed:
    return sql.SQL(text).format(schema=sql.Identifier(schema))


def _args(seq: int) -> str:
    return json.dumps({"seq": seq}, separators=(",", ":"))


class RawTarget(Target):
    name = "raw"
    worker_module = "benchmarks.targets.raw"

    def __init__(self, dsn: str, variant: str = "") -> None:
        super().__init__(dsn, variant)
        self.schema = ""

    def label(self, scenario: str) -> str:
        return {
            "drain": "raw: claim 100 + delete",
            "enqueue-tx": {"insert": "raw: INSERT",
                           "notify": "raw: INSERT + NOTIFY"}.get(self.variant, "raw"),
            "enqueue-one": {"insert": "raw: autocommit INSERT",
                            "notify": "raw: autocommit INSERT + NOTIFY"}.get(self.variant,
                                                                              "raw"),
            "bulk": {"unnest": "raw: INSERT unnest", "copy": "raw: COPY"}.get(self.variant, "raw"),
            "latency": "raw: LISTEN + claim",
            "soak": "raw: claim 100 + delete",
        }.get(scenario, "raw")

    def settings(self, scenario: str) -> str:
        return {
            "drain": "psycopg, 1 connection, synchronous_commit=off, batch 100",
            "enqueue-tx": "psycopg, autocommit off (BEGIN, INSERT, COMMIT)",
            "enqueue-one": "psycopg, 1 autocommit connection, one statement per job",
            "bulk": "psycopg, 1 connection, one transaction per batch, no ids returned",
            "latency": "psycopg; worker LISTENs, claims up to 100 when woken",
            "soak": "psycopg; worker LISTENs, claims 100 + delete",
        }.get(scenario, "")

    # -- the store ------------------------------------------------------------------------

    def setup(self) -> None:
        self.schema = fresh_schema(self.dsn)

    def teardown(self) -> None:
        if self.schema:
            drop_schema(self.dsn, self.schema)

    def jobs_table(self) -> tuple[str, str, str]:
        return self.dsn, self.schema, "jobs"

    def pending(self) -> dict[str, int]:
        return {"jobs": int(scalar(self.dsn, _q("SELECT count(*) FROM {schema}.jobs",
                                                  self.schema)))}

    def stored(self) -> int:
        return self.pending()["jobs"]

    # -- enqueueing ------------------------------------------------------------------------

    def preload(self, n: int) -> None:
        # COPY of 100,000 rows per transaction: 150k rows/s here against 108k at
        # 10,000, which matters for the scaling scenario's 1M-job backlogs.
        self._copy(n, 100_000)
        vacuum_analyze(self.dsn, sql.Identifier(self.schema, "jobs"))

    def _copy(self, n: int, batch: int) -> None:
        with psycopg.connect(self.dsn) as conn:
            for first in range(0, n, batch):
                with conn.cursor() as cur, cur.copy(_q(COPY, self.schema)) as copy:
                    for seq in range(first, min(n, first + batch)):
                        copy.write_row((QUEUE, TASK, _args(seq)))
                conn.commit()

    def bulk(self, n: int, batch: int) -> None:
        if self.variant == "copy":
            self._copy(n, batch)
            return
        statement = _q(UNNEST, self.schema)
        with psycopg.connect(self.dsn) as conn:
            for first in range(0, n, batch):
                conn.execute(statement, {"queue": QUEUE, "task": TASK, "args": [
                    _args(seq) for seq in range(first, min(n, first + batch))]})
                conn.commit()

    def enqueue_tx(self, n: int, clients: int) -> None:
        statement = _q(INSERT_NOTIFY if self.variant == "notify" else INSERT, self.schema)
        errors: list[BaseException] = []

        def client(k: int) -> None:
            try:
                with psycopg.connect(self.dsn) as conn:
                    for seq in range(k, n, clients):
                        conn.execute(statement, {"queue": QUEUE, "task": TASK,
                                                 "args": _args(seq), "channel": CHANNEL})
                        conn.commit()
            except BaseException as exc:  # noqa: BLE001 - re-raised below
                errors.append(exc)

        threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]

    def enqueue_one(self, n: int) -> float:
        statement = _q(INSERT_NOTIFY if self.variant == "notify" else INSERT, self.schema)
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            started = time.perf_counter()
            for seq in range(n):
                conn.execute(statement, {"queue": QUEUE, "task": TASK, "args": _args(seq),
                                         "channel": CHANNEL})
            return time.perf_counter() - started

    def latency_produce(self, first_seq: int, count: int,
                        interval: float) -> list[LatencySample]:
        statement = _q(INSERT_NOTIFY, self.schema)
        samples = []
        with psycopg.connect(self.dsn) as conn:
            pace = paced(interval)
            for seq in range(first_seq, first_seq + count):
                next(pace)
                t0 = time.time()
                conn.execute(statement, {"queue": QUEUE, "task": TASK, "args": _args(seq),
                                         "channel": CHANNEL})
                conn.commit()
                samples.append(LatencySample(seq, t0, time.time()))
        return samples

    def soak_produce(self, rate: float, seconds: float, tick: float) -> int:
        insert = _q(UNNEST, self.schema)
        per_tick = max(1, round(rate * tick))
        deadline = time.monotonic() + seconds
        self.enqueued = 0
        with psycopg.connect(self.dsn) as conn:
            for _ in paced(tick):
                if time.monotonic() >= deadline:
                    break
                first = self.enqueued
                conn.execute(insert, {"queue": QUEUE, "task": TASK, "args": [
                    _args(seq) for seq in range(first, first + per_tick)]})
                conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, QUEUE))
                conn.commit()
                self.enqueued += per_tick
        return self.enqueued

    # -- the worker ----------------------------------------------------------------------

    def worker_spec(self, scenario: str, mode: str, record_starts: bool = False) -> dict[str, Any]:
        return {"dsn": self.dsn, "schema": self.schema, "mode": mode, "batch": 100,
                "record_starts": record_starts}


def work(spec: dict[str, Any], probe: Any) -> dict[str, Any]:
    """The floor's worker: claim, "run" (the probe), delete; LISTEN when idle."""
    schema = spec["schema"]
    claim, delete = _q(CLAIM, schema), _q(DELETE, schema)
    params = {"worker": "raw", "queue": QUEUE, "limit": spec["batch"]}
    burst = spec["mode"] == "burst"
    with psycopg.connect(spec["dsn"], autocommit=True) as conn, \
            psycopg.connect(spec["dsn"], autocommit=True) as listen:
        # Claims and acks may be lost in a crash (the lease re-runs the job).
        conn.execute("SET synchronous_commit = off")
        listen.execute(sql.SQL("LISTEN {}").format(sql.Identifier(CHANNEL)))
        while not probe.stop_requested.is_set():
            rows = conn.execute(claim, params).fetchall()
            for _, seq in rows:
                probe.started(seq)
            if rows:
                conn.execute(delete, {"ids": [r[0] for r in rows], "worker": "raw"})
            if len(rows) == spec["batch"]:
                continue
            if burst:
                if not rows:
                    break
                continue
            # Idle: sleep until a NOTIFY (or half a second, to see a stop request).
            for _ in listen.notifies(timeout=0.5, stop_after=1):
                pass
    return {}
