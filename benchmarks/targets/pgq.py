"""pgqueuer, with the settings its own documentation and benchmarks favour.

It lives in a database of its own (``<prefix>_pgqueuer``, schema ``public``),
created afresh for each scenario and installed with ``Queries.install()`` at
its default durability (every table logged, as jobqueue's).

Best settings: the asyncpg driver (one connection, as ``pgq run`` uses),
the uvloop event loop (its CLI's default when uvloop is installed),
``batch_size=100``, no global concurrency cap, ``QueueExecutionMode.drain``
for the drain. Producers enqueue through ``Queries.enqueue`` on asyncpg
connections: one job (a transaction per job) or lists of jobs (one
statement per batch).
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from benchmarks.common import database_dsn, drop_database, recreate_database, scalar
from benchmarks.targets import LatencySample, Target, apaced

ENTRYPOINT = "noop"
TABLE = "pgqueuer"


def _payload(seq: int) -> bytes:
    return json.dumps({"seq": seq}, separators=(",", ":")).encode()


async def _connect(dsn: str) -> Any:
    """An asyncpg connection from a libpq DSN in either form (asyncpg reads URLs only)."""
    import asyncpg
    from psycopg.conninfo import conninfo_to_dict

    params = conninfo_to_dict(dsn)
    names = {"host": "host", "port": "port", "user": "user", "password": "password",
             "dbname": "database"}
    kwargs: dict[str, Any] = {names[k]: v for k, v in params.items() if k in names}
    if "port" in kwargs:
        kwargs["port"] = int(kwargs["port"])
    return await asyncpg.connect(**kwargs)


def _run(coro: Any) -> Any:
    import uvloop

    return uvloop.run(coro)


class PgQueuerTarget(Target):
    name = "pgqueuer"
    worker_module = "benchmarks.targets.pgq"
    requires = ("pgqueuer", "asyncpg", "uvloop")

    def __init__(self, dsn: str, variant: str = "", batch_size: int = 100,
                 database_prefix: str = "jq_bench") -> None:
        super().__init__(dsn, variant)
        self.batch_size = batch_size
        self.database = f"{database_prefix}_pgqueuer"
        self.db_dsn = database_dsn(dsn, self.database)

    def label(self, scenario: str) -> str:
        from importlib.metadata import version

        return f"pgqueuer {version('pgqueuer')}"

    def settings(self, scenario: str) -> str:
        if scenario in ("drain", "latency", "soak"):
            return f"asyncpg, uvloop, batch_size {self.batch_size}, async handler"
        if scenario == "bulk":
            return "asyncpg, Queries.enqueue(lists), one statement per batch"
        return "asyncpg, Queries.enqueue in a transaction, a connection per client"

    # -- the store ------------------------------------------------------------------------

    def setup(self) -> None:
        self.db_dsn = recreate_database(self.dsn, self.database)
        _run(self._install())

    async def _install(self) -> None:
        from pgqueuer import AsyncpgDriver, Queries

        conn = await _connect(self.db_dsn)
        try:
            await Queries(AsyncpgDriver(conn)).install()
        finally:
            await conn.close()

    def teardown(self) -> None:
        drop_database(self.dsn, self.database)

    def jobs_table(self) -> tuple[str, str, str]:
        return self.db_dsn, "public", TABLE

    def pending(self) -> dict[str, int]:
        return {TABLE: int(scalar(self.db_dsn, f"SELECT count(*) FROM {TABLE}"))}

    def stored(self) -> int:
        return self.pending()[TABLE]

    # -- enqueueing ------------------------------------------------------------------------

    def preload(self, n: int) -> None:
        from psycopg import sql

        from benchmarks.common import vacuum_analyze

        self.bulk(n, 1_000)
        vacuum_analyze(self.db_dsn, sql.Identifier(TABLE))

    def bulk(self, n: int, batch: int) -> None:
        async def main() -> None:
            from pgqueuer import AsyncpgDriver, Queries

            conn = await _connect(self.db_dsn)
            try:
                queries = Queries(AsyncpgDriver(conn))
                for first in range(0, n, batch):
                    size = min(n, first + batch) - first
                    await queries.enqueue([ENTRYPOINT] * size,
                                          [_payload(s) for s in range(first, first + size)],
                                          [0] * size)
            finally:
                await conn.close()

        _run(main())

    def enqueue_tx(self, n: int, clients: int) -> None:
        async def client(k: int) -> None:
            from pgqueuer import AsyncpgDriver, Queries

            conn = await _connect(self.db_dsn)
            try:
                queries = Queries(AsyncpgDriver(conn))
                for seq in range(k, n, clients):
                    async with conn.transaction():
                        await queries.enqueue(ENTRYPOINT, _payload(seq))
            finally:
                await conn.close()

        async def main() -> None:
            await asyncio.gather(*(client(k) for k in range(clients)))

        _run(main())

    def latency_produce(self, first_seq: int, count: int,
                        interval: float) -> list[LatencySample]:
        async def main() -> list[LatencySample]:
            from pgqueuer import AsyncpgDriver, Queries

            samples = []
            conn = await _connect(self.db_dsn)
            try:
                queries = Queries(AsyncpgDriver(conn))
                pace = apaced(interval)
                for seq in range(first_seq, first_seq + count):
                    await pace.__anext__()
                    t0 = time.time()
                    async with conn.transaction():
                        await queries.enqueue(ENTRYPOINT, _payload(seq))
                    samples.append(LatencySample(seq, t0, time.time()))
            finally:
                await conn.close()
            return samples

        result: list[LatencySample] = _run(main())
        return result

    def soak_produce(self, rate: float, seconds: float, tick: float) -> int:
        per_tick = max(1, round(rate * tick))

        async def main() -> None:
            from pgqueuer import AsyncpgDriver, Queries

            deadline = time.monotonic() + seconds
            conn = await _connect(self.db_dsn)
            try:
                queries = Queries(AsyncpgDriver(conn))
                async for _ in apaced(tick):
                    if time.monotonic() >= deadline:
                        break
                    first = self.enqueued
                    await queries.enqueue([ENTRYPOINT] * per_tick,
                                          [_payload(s) for s in range(first, first + per_tick)],
                                          [0] * per_tick)
                    self.enqueued += per_tick
            finally:
                await conn.close()

        self.enqueued = 0
        _run(main())
        return self.enqueued

    # -- the worker ----------------------------------------------------------------------

    def worker_spec(self, scenario: str, mode: str, record_starts: bool = False) -> dict[str, Any]:
        return {"dsn": self.db_dsn, "mode": mode, "batch_size": self.batch_size,
                "record_starts": record_starts}


def work(spec: dict[str, Any], probe: Any) -> dict[str, Any]:
    import logging
    from datetime import timedelta

    from pgqueuer import AsyncpgDriver, Queries, QueueManager
    from pgqueuer.domain.types import QueueExecutionMode

    logging.getLogger("pgqueuer").setLevel(logging.WARNING)

    async def main() -> None:
        conn = await _connect(spec["dsn"])
        try:
            qm = QueueManager(Queries(AsyncpgDriver(conn)))

            @qm.entrypoint(ENTRYPOINT)
            async def noop(job: Any) -> None:
                probe.started(json.loads(job.payload)["seq"])

            loop = asyncio.get_running_loop()
            probe.on_stop(lambda: loop.call_soon_threadsafe(qm.shutdown.set))
            mode = (QueueExecutionMode.drain if spec["mode"] == "burst"
                    else QueueExecutionMode.continuous)
            await qm.run(batch_size=spec["batch_size"], mode=mode,
                         dequeue_timeout=timedelta(seconds=5))
        finally:
            await conn.close()

    _run(main())
    return {}
