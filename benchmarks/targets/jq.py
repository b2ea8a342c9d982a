"""jobqueue, used as its README says: ``enqueue``/``enqueue_many`` on the caller's
psycopg connection, and one ``Worker`` per process.

Worker settings: ``concurrency`` 200 and ``batch_size`` 100 by default. A
claim takes ``min(batch_size, free slots)`` jobs, so with concurrency equal to
the batch the next claim waits until the whole batch has finished and its
round trip is never overlapped with work (measured: 13.9k jobs/s at 100/100,
22.5k at 200/100 on the same machine); one batch of headroom is what pgqueuer
gets by fetching the next batch while the last runs. Everything else at its default (acks
flushed every 5 ms or 500 outcomes, heartbeat every 2 s, LISTEN/NOTIFY with a
1 s poll as the fallback). Logging at ``warning``: the per-job events are
debug-level and cost a no-op call either way.

The drain also runs jobqueue at its defaults (``defaults=True``): a
``WorkerConfig`` given no concurrency and no batch size, which is what
``jobqueue worker`` runs without tuning flags. The enqueue-one scenario calls
``enqueue()`` without ``conn``: jobqueue's own pool, which commits each job.
"""

from __future__ import annotations

import asyncio
import statistics
import threading
import time
from typing import Any

import psycopg

from benchmarks.common import drop_schema, fresh_schema, scalar
from benchmarks.targets import LatencySample, Target, paced

TASKS = {"async": "noop_async", "sync": "noop_sync"}
# Jobs per enqueue_many call when storing a drain's backlog (enqueue_many sends
# 1,000 or more by COPY): 10,000 stored 60k jobs/s here, 1,000 44k jobs/s.
PRELOAD_BATCH = 10_000


def worker_defaults() -> tuple[int, int]:
    """Concurrency and batch size of a WorkerConfig given neither."""
    from jobqueue.worker import WorkerConfig

    config = WorkerConfig()
    return config.concurrency, config.batch_size


def build_app(dsn: str, schema: str, probe: Any = None, history: bool = True) -> Any:
    from jobqueue import JobQueue

    # history=True: the default retention (a week), each success a job_history row.
    app = JobQueue(dsn, schema=schema, history=None if history else False)

    @app.task(name="pause")
    async def pause(seq: int, seconds: float) -> int:
        # The result scenario's job: long enough that its waiter is waiting first.
        await asyncio.sleep(seconds)
        return seq

    @app.task(name="noop_async")
    async def noop_async(seq: int) -> None:
        if probe is not None:
            probe.started(seq)

    @app.task(name="noop_sync")
    def noop_sync(seq: int) -> None:
        if probe is not None:
            probe.started(seq)

    return app


class JobQueueTarget(Target):
    name = "jobqueue"
    worker_module = "benchmarks.targets.jq"

    def __init__(self, dsn: str, variant: str = "async", concurrency: int = 200,
                 batch_size: int = 100, defaults: bool = False, history: bool = True,
                 shape: str = "") -> None:
        super().__init__(dsn, variant or "async")
        self.concurrency = concurrency
        self.batch_size = batch_size
        # False: JobQueue(history=False), successes only deleted (the drain's baseline).
        self.history = history
        # The chord scenario: "plain" (enqueue_many of n jobs) or "chord" (one chord of
        # n - 1 members and its callback); how long that enqueue took.
        self.shape = shape
        self.enqueue_seconds = 0.0
        # The worker at its defaults: concurrency and batch_size left out of its config.
        self.defaults = defaults
        self.schema = ""
        self.app: Any = None

    @property
    def task(self) -> str:
        return TASKS[self.variant]

    def label(self, scenario: str) -> str:
        if scenario in ("drain", "latency", "soak"):
            kind = "jobqueue defaults" if self.defaults else "jobqueue"
            if not self.history:
                kind += ", history off"
            return f"{kind} ({self.variant} handler)"
        if scenario == "result":
            return "jobqueue: app.result()"
        if scenario == "chord":
            return ("jobqueue: one chord (members + callback)" if self.shape == "chord"
                    else "jobqueue: plain jobs")
        if scenario == "enqueue-one":
            return "jobqueue: enqueue() without conn"
        return "jobqueue"

    def settings(self, scenario: str) -> str:
        if scenario in ("drain", "latency", "soak"):
            handler = "async def" if self.variant == "async" else "def (thread pool)"
            if self.defaults:
                concurrency, batch_size = worker_defaults()
                return (f"WorkerConfig() defaults, as `jobqueue worker` without tuning flags "
                        f"(concurrency {concurrency}, batch_size {batch_size}), {handler} "
                        "handler")
            history = ("history=False: successes deleted, none kept" if not self.history
                       else "history on (the default: a row per success, kept a week)")
            return (f"Worker concurrency {self.concurrency}, batch_size {self.batch_size}, "
                    f"{handler} handler, {history}")
        if scenario == "result":
            return ("app.result(id) waiting on a 50 ms job, one at a time; wake-up = its "
                    "return minus the ack statement's time (job_history.finished_at)")
        if scenario == "chord":
            how = ("enqueue_workflow(chord(group(N - 1 sigs), sig)), one call (COPY from "
                   "1,000 nodes)" if self.shape == "chord"
                   else "enqueue_many(N jobs), one call (COPY)")
            return f"{how}; drained by one worker, concurrency {self.concurrency}"
        if scenario == "bulk":
            return "enqueue_many(conn=psycopg conn), one transaction per batch"
        if scenario == "enqueue-one":
            return ("enqueue(task, args) without conn: jobqueue's own pool commits each job; "
                    "1 client, pool warmed by one enqueue first")
        return "enqueue(conn=psycopg conn) + commit, a thread per client"

    # -- the store ------------------------------------------------------------------------

    def setup(self) -> None:
        self.schema = fresh_schema(self.dsn)
        self.app = build_app(self.dsn, self.schema, history=self.history)

    def teardown(self) -> None:
        if self.app is not None:
            self.app.close()
        if self.schema:
            drop_schema(self.dsn, self.schema)

    def jobs_table(self) -> tuple[str, str, str]:
        return self.dsn, self.schema, "jobs"

    def pending(self) -> dict[str, int]:
        from psycopg import sql

        return {table: int(scalar(self.dsn, sql.SQL("SELECT count(*) FROM {}").format(
            sql.Identifier(self.schema, table)))) for table in ("jobs", "dead_jobs")}

    def stored(self) -> int:
        return self.pending()["jobs"]

    # -- enqueueing ------------------------------------------------------------------------

    def preload(self, n: int) -> None:
        from psycopg import sql

        from benchmarks.common import vacuum_analyze

        started = time.perf_counter()
        if self.shape == "chord":
            from jobqueue import chord, group

            sigs = group(self.app.sig(self.task, {"seq": seq}) for seq in range(n - 1))
            self.app.enqueue_workflow(chord(sigs, self.app.sig(self.task, {"seq": n - 1})))
        elif self.shape == "plain":
            self.app.enqueue_many([(self.task, {"seq": seq}) for seq in range(n)])
        else:
            self.bulk(n, PRELOAD_BATCH)
        self.enqueue_seconds = time.perf_counter() - started
        vacuum_analyze(self.dsn, sql.Identifier(self.schema, "jobs"))

    def bulk(self, n: int, batch: int) -> None:
        with psycopg.connect(self.dsn) as conn:
            for first in range(0, n, batch):
                self.app.enqueue_many([(self.task, {"seq": seq})
                                       for seq in range(first, min(n, first + batch))],
                                      conn=conn)
                conn.commit()

    def enqueue_tx(self, n: int, clients: int) -> None:
        errors: list[BaseException] = []
        # The schema probe runs once per app: pay for it before the clients start.
        with psycopg.connect(self.dsn) as conn:
            self.app.enqueue(self.task, {"seq": -1}, conn=conn)
            conn.rollback()

        def client(k: int) -> None:
            try:
                with psycopg.connect(self.dsn) as conn:
                    for seq in range(k, n, clients):
                        self.app.enqueue(self.task, {"seq": seq}, conn=conn)
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
        from psycopg import sql

        # The first enqueue opens the app's pool and probes the schema: paid
        # before the clock starts (as enqueue_tx pays the probe), and the job it
        # stored removed again, so that the count check sees the n jobs only.
        warm = self.app.enqueue(self.task, {"seq": -1})
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DELETE FROM {} WHERE id = %s").format(
                sql.Identifier(self.schema, "jobs")), (warm,))
        started = time.perf_counter()
        for seq in range(n):
            self.app.enqueue(self.task, {"seq": seq})
        return time.perf_counter() - started

    def latency_produce(self, first_seq: int, count: int,
                        interval: float) -> list[LatencySample]:
        samples = []
        with psycopg.connect(self.dsn) as conn:
            pace = paced(interval)
            for seq in range(first_seq, first_seq + count):
                next(pace)
                t0 = time.time()
                self.app.enqueue(self.task, {"seq": seq}, conn=conn)
                conn.commit()
                samples.append(LatencySample(seq, t0, time.time()))
        return samples

    def soak_produce(self, rate: float, seconds: float, tick: float) -> int:
        per_tick = max(1, round(rate * tick))
        deadline = time.monotonic() + seconds
        self.enqueued = 0
        with psycopg.connect(self.dsn) as conn:
            for _ in paced(tick):
                if time.monotonic() >= deadline:
                    break
                first = self.enqueued
                self.app.enqueue_many([(self.task, {"seq": seq})
                                       for seq in range(first, first + per_tick)], conn=conn)
                conn.commit()
                self.enqueued += per_tick
        return self.enqueued

    def result_wakeups(self, n: int, seconds: float, timeout: float) -> dict[str, float]:
        """``n`` jobs of ``seconds`` each, one at a time, awaited with app.result():
        milliseconds from the ack's statement to result() returning (median, p90, max)."""
        wakes = []
        for seq in range(n):
            job_id = self.app.enqueue("pause", {"seq": seq, "seconds": seconds})
            if self.app.result(job_id, timeout=timeout) != seq:
                raise RuntimeError(f"job {job_id}: wrong result")
            returned = time.time()
            finished = self.app.job(job_id).finished_at
            wakes.append((returned - finished.timestamp()) * 1000)
        wakes.sort()
        return {"p50_ms": round(statistics.median(wakes), 2),
                "p90_ms": round(wakes[int(0.9 * (len(wakes) - 1))], 2),
                "max_ms": round(wakes[-1], 2)}

    # -- the worker ----------------------------------------------------------------------

    def worker_spec(self, scenario: str, mode: str, record_starts: bool = False) -> dict[str, Any]:
        tuning = {} if self.defaults else {"concurrency": self.concurrency,
                                           "batch_size": self.batch_size}
        return {"dsn": self.dsn, "schema": self.schema, "mode": mode, "tuning": tuning,
                "record_starts": record_starts, "history": self.history}


def work(spec: dict[str, Any], probe: Any) -> dict[str, Any]:
    from jobqueue.log import configure
    from jobqueue.worker import WorkerConfig

    configure(level="warning", force=True)
    app = build_app(spec["dsn"], spec["schema"], probe, spec.get("history", True))
    # No tuning: the worker's own defaults, as `jobqueue worker` without flags.
    worker = app.worker(WorkerConfig(queues=("default",), burst=spec["mode"] == "burst",
                                     handle_signals=False, **spec["tuning"]))
    probe.on_stop(worker.request_stop)
    try:
        worker.run()
    finally:
        app.close()
    return {"stats": worker.stats}
