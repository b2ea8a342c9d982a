"""procrastinate, with the settings its documentation recommends for throughput.

It lives in a database of its own (``<prefix>_procrastinate``, schema
``public``), created afresh for each scenario, its schema applied with
``schema_manager.apply_schema_async()``.

Best settings: ``PsycopgConnector`` (its async psycopg 3 pool, sized to the
concurrency), ``concurrency`` 10 by default (one connection per in-flight
job), ``listen_notify=True``, ``delete_jobs="successful"`` (finished rows leave
the table, as jobqueue's do; "never" keeps them and grows the table),
``wait=False`` for the drain. Producers use ``defer_async`` (each defer is its
own statement and transaction on a pooled connection: procrastinate's async
API does not enqueue inside a caller's transaction) and
``batch_defer_async`` for batches.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from benchmarks.common import database_dsn, drop_database, recreate_database, scalar
from benchmarks.targets import LatencySample, Target, apaced

TABLE = "procrastinate_jobs"


def build_app(dsn: str, pool_size: int, probe: Any = None) -> Any:
    import procrastinate

    app = procrastinate.App(connector=procrastinate.PsycopgConnector(
        conninfo=dsn, min_size=1, max_size=pool_size))

    @app.task(name="noop", queue="default")
    async def noop(seq: int) -> None:
        if probe is not None:
            probe.started(seq)

    return app


class ProcrastinateTarget(Target):
    name = "procrastinate"
    worker_module = "benchmarks.targets.proc"
    requires = ("procrastinate",)

    def __init__(self, dsn: str, variant: str = "", concurrency: int = 10,
                 database_prefix: str = "jq_bench") -> None:
        super().__init__(dsn, variant)
        self.concurrency = concurrency
        self.database = f"{database_prefix}_procrastinate"
        self.db_dsn = database_dsn(dsn, self.database)

    def label(self, scenario: str) -> str:
        from importlib.metadata import version

        return f"procrastinate {version('procrastinate')}"

    def settings(self, scenario: str) -> str:
        if scenario in ("drain", "latency", "soak"):
            return (f"PsycopgConnector, concurrency {self.concurrency}, listen_notify, "
                    "delete_jobs=successful, async handler")
        if scenario == "bulk":
            return "PsycopgConnector, batch_defer_async per batch"
        return "PsycopgConnector, defer_async (own transaction), a coroutine per client"

    # -- the store ------------------------------------------------------------------------

    def setup(self) -> None:
        self.db_dsn = recreate_database(self.dsn, self.database)

        async def main() -> None:
            app = build_app(self.db_dsn, 2)
            async with app.open_async():
                await app.schema_manager.apply_schema_async()

        asyncio.run(main())

    def teardown(self) -> None:
        drop_database(self.dsn, self.database)

    def jobs_table(self) -> tuple[str, str, str]:
        return self.db_dsn, "public", TABLE

    def pending(self) -> dict[str, int]:
        return {
            "unfinished": int(scalar(self.db_dsn, f"SELECT count(*) FROM {TABLE} "
                                     "WHERE status IN ('todo', 'doing')")),
            "failed": int(scalar(self.db_dsn, f"SELECT count(*) FROM {TABLE} "
                                 "WHERE status NOT IN ('todo', 'doing', 'succeeded')")),
        }

    def stored(self) -> int:
        return int(scalar(self.db_dsn, f"SELECT count(*) FROM {TABLE}"))

    # -- enqueueing ------------------------------------------------------------------------

    def preload(self, n: int) -> None:
        from psycopg import sql

        from benchmarks.common import vacuum_analyze

        self.bulk(n, 1_000)
        vacuum_analyze(self.db_dsn, sql.Identifier(TABLE))

    def bulk(self, n: int, batch: int) -> None:
        async def main() -> None:
            app = build_app(self.db_dsn, 1)
            async with app.open_async():
                task = app.tasks["noop"]
                for first in range(0, n, batch):
                    await task.batch_defer_async(
                        *({"seq": s} for s in range(first, min(n, first + batch))))

        asyncio.run(main())

    def enqueue_tx(self, n: int, clients: int) -> None:
        async def main() -> None:
            app = build_app(self.db_dsn, clients)
            async with app.open_async():
                task = app.tasks["noop"]

                async def client(k: int) -> None:
                    for seq in range(k, n, clients):
                        await task.defer_async(seq=seq)

                await asyncio.gather(*(client(k) for k in range(clients)))

        asyncio.run(main())

    def latency_produce(self, first_seq: int, count: int,
                        interval: float) -> list[LatencySample]:
        async def main() -> list[LatencySample]:
            samples = []
            app = build_app(self.db_dsn, 1)
            async with app.open_async():
                task = app.tasks["noop"]
                pace = apaced(interval)
                for seq in range(first_seq, first_seq + count):
                    await pace.__anext__()
                    t0 = time.time()
                    await task.defer_async(seq=seq)
                    samples.append(LatencySample(seq, t0, time.time()))
            return samples

        result: list[LatencySample] = asyncio.run(main())
        return result

    def soak_produce(self, rate: float, seconds: float, tick: float) -> int:
        per_tick = max(1, round(rate * tick))

        async def main() -> None:
            deadline = time.monotonic() + seconds
            app = build_app(self.db_dsn, 1)
            async with app.open_async():
                task = app.tasks["noop"]
                async for _ in apaced(tick):
                    if time.monotonic() >= deadline:
                        break
                    first = self.enqueued
                    await task.batch_defer_async(
                        *({"seq": s} for s in range(first, first + per_tick)))
                    self.enqueued += per_tick

        self.enqueued = 0
        asyncio.run(main())
        return self.enqueued

    # -- the worker ----------------------------------------------------------------------

    def worker_spec(self, scenario: str, mode: str, record_starts: bool = False) -> dict[str, Any]:
        return {"dsn": self.db_dsn, "mode": mode, "concurrency": self.concurrency,
                "record_starts": record_starts}


def work(spec: dict[str, Any], probe: Any) -> dict[str, Any]:
    import logging

    logging.getLogger("procrastinate").setLevel(logging.WARNING)

    async def main() -> None:
        concurrency = spec["concurrency"]
        # A connection per in-flight job, plus the listener and the heartbeat.
        app = build_app(spec["dsn"], concurrency + 2, probe)
        async with app.open_async():
            worker = asyncio.ensure_future(app.run_worker_async(
                queues=["default"], concurrency=concurrency,
                wait=spec["mode"] != "burst", listen_notify=True,
                delete_jobs="successful", install_signal_handlers=False))
            loop = asyncio.get_running_loop()
            probe.on_stop(lambda: loop.call_soon_threadsafe(worker.cancel))
            try:
                await worker
            except asyncio.CancelledError:
                if not probe.stop_requested.is_set():
                    raise

    asyncio.run(main())
    return {}
