"""Transactional ``enqueue_async``: psycopg ``AsyncConnection``, SQLAlchemy ``AsyncConnection``
and ``AsyncSession``, and jobqueue's own async pool.

The same contract as the sync API: the job exists if and only if the caller
commits, jobqueue never commits for the caller, a refused job sends nothing,
and ``enqueue_many_async`` is one round trip. Each test drives its coroutine
with ``asyncio.run`` (no pytest plugin), and everything bound to an event loop
(connections, engines, jobqueue's async pool) is opened and closed inside it.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import tempfile
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
import pytest
from psycopg import pq, sql
from sqlalchemy import create_engine, insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from jobqueue import (
    JobQueue,
    PayloadError,
    SchemaNotMigratedError,
    UnknownTaskError,
    UnsupportedConnectionError,
)
from tests.helpers import count, wait_until, worker_thread

INTRANS = pq.TransactionStatus.INTRANS
Admin = psycopg.Connection[Any]


class Base(DeclarativeBase):
    pass


class Account(Base):
    """The business row written in the same transaction as the job."""

    __tablename__ = "accounts"  # found through the connection's search_path

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str]


# -- fixtures and helpers ----------------------------------------------------------------------


class Runs:
    """Tags the ``record`` handler ran, as seen from the worker."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tags: list[str] = []

    def add(self, tag: str) -> None:
        with self._lock:
            self._tags.append(tag)

    def tags(self) -> list[str]:
        with self._lock:
            return list(self._tags)

    def wait_for(self, *tags: str) -> None:
        wait_until(lambda: set(tags) <= set(self.tags()), 20, message=f"jobs {tags} to run")


@pytest.fixture
def runs(app: JobQueue) -> Runs:
    """Registers ``record`` (an async handler whose runs are recorded) and ``plain``."""
    runs = Runs()

    @app.task(name="record")
    async def record(tag: str) -> None:
        runs.add(tag)

    @app.task()
    def plain(**_: Any) -> None: ...

    return runs


@pytest.fixture
def accounts(admin: Admin, migrated: str) -> str:
    admin.execute(sql.SQL("CREATE TABLE {} (id serial PRIMARY KEY, name text NOT NULL)")
                  .format(sql.Identifier(migrated, "accounts")))
    return "accounts"


@dataclass
class Caller:
    """One way an async application holds a transaction."""

    conn: Any  # what the application passes as conn=
    add: Callable[[str], Awaitable[None]]  # write a business row in the transaction
    commit: Callable[[], Awaitable[None]]
    rollback: Callable[[], Awaitable[None]]
    raw: Callable[[], Awaitable[psycopg.AsyncConnection[Any]]]  # the psycopg connection


KINDS = ["psycopg AsyncConnection", "SQLAlchemy AsyncConnection", "SQLAlchemy AsyncSession"]


@contextlib.asynccontextmanager
async def open_caller(kind: str, dsn: str, schema: str) -> AsyncIterator[Caller]:
    options = f"-c search_path={schema}"
    if kind == "psycopg AsyncConnection":
        async with await psycopg.AsyncConnection.connect(dsn, options=options) as pc:
            async def pg_add(name: str) -> None:
                await pc.execute("INSERT INTO accounts (name) VALUES (%s)", [name])

            async def pg_raw() -> psycopg.AsyncConnection[Any]:
                return pc

            yield Caller(pc, pg_add, pc.commit, pc.rollback, pg_raw)
        return

    engine = create_async_engine(
        "postgresql+psycopg://",
        async_creator=lambda: psycopg.AsyncConnection.connect(dsn, options=options))
    try:
        if kind == "SQLAlchemy AsyncConnection":
            async with engine.connect() as ac:
                async def ac_add(name: str) -> None:
                    await ac.execute(insert(Account).values(name=name))

                async def ac_raw() -> psycopg.AsyncConnection[Any]:
                    return (await ac.get_raw_connection()).driver_connection

                yield Caller(ac, ac_add, ac.commit, ac.rollback, ac_raw)
        else:
            async with AsyncSession(engine) as session:
                async def s_add(name: str) -> None:
                    session.add(Account(name=name))
                    await session.flush()  # really written inside the transaction

                async def s_raw() -> psycopg.AsyncConnection[Any]:
                    conn = await session.connection()
                    return (await conn.get_raw_connection()).driver_connection

                yield Caller(session, s_add, session.commit, session.rollback, s_raw)
    finally:
        await engine.dispose()


def job_rows(admin: Admin, schema: str) -> dict[int, tuple[str, Any]]:
    rows = admin.execute(sql.SQL("SELECT id, task, args FROM {}")
                         .format(sql.Identifier(schema, "jobs"))).fetchall()
    return {r[0]: (r[1], r[2]) for r in rows}


@contextlib.contextmanager
def traced(conn: psycopg.AsyncConnection[Any]) -> Iterator[list[int]]:
    """[round trips, frontend messages] seen through the libpq trace."""
    result: list[int] = []
    with tempfile.TemporaryFile() as f:
        conn.pgconn.trace(f.fileno())
        conn.pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS | pq.Trace.REGRESS_MODE)
        try:
            yield result
        finally:
            conn.pgconn.untrace()
            f.seek(0)
            text = f.read().decode("utf-8", "replace")
            # Every exchange ends with exactly one ReadyForQuery from the server.
            result.append(len(re.findall(r"^B\t\d+\tReadyForQuery", text, re.MULTILINE)))
            result.append(len(re.findall(r"^F\t", text, re.MULTILINE)))


def drain(app: JobQueue, runs: Runs, admin: Admin, *tags: str) -> None:
    """Run a worker until ``tags`` ran and the jobs table is empty again."""
    with worker_thread(app):
        runs.wait_for(*tags)
        # Once jobs is empty, any job that had existed would have run first.
        wait_until(lambda: count(admin, app.schema, "jobs") == 0, message="the acks")


# -- commit, rollback, and whose transaction it is ---------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_job_is_invisible_until_the_caller_commits_then_runs(
        kind: str, app: JobQueue, runs: Runs, pg_dsn: str, admin: Admin, accounts: str) -> None:
    async def main() -> int:
        async with open_caller(kind, pg_dsn, app.schema) as caller:
            await caller.add("ada")
            job_id = await app.enqueue_async("record", {"tag": "welcome"}, conn=caller.conn)
            # jobqueue did not commit: the caller is still inside its transaction,
            assert (await caller.raw()).info.transaction_status == INTRANS
            # and from another connection neither the business row nor the job exists.
            assert count(admin, app.schema, accounts) == 0
            assert count(admin, app.schema, "jobs") == 0
            await caller.commit()
            return job_id

    job_id = asyncio.run(main())
    assert count(admin, app.schema, accounts) == 1
    assert job_rows(admin, app.schema) == {job_id: ("record", {"tag": "welcome"})}
    drain(app, runs, admin, "welcome")
    assert runs.tags() == ["welcome"]


@pytest.mark.parametrize("kind", KINDS)
def test_rolled_back_job_never_exists_and_never_runs(
        kind: str, app: JobQueue, runs: Runs, pg_dsn: str, admin: Admin, accounts: str) -> None:
    async def main() -> None:
        async with open_caller(kind, pg_dsn, app.schema) as caller:
            await caller.add("bob")
            await app.enqueue_async("record", {"tag": "rolled-back"}, conn=caller.conn)
            await caller.rollback()
            assert count(admin, app.schema, accounts) == 0
            assert count(admin, app.schema, "jobs") == 0
            # The next transaction on the same connection: its job does run.
            await app.enqueue_async("record", {"tag": "sentinel"}, conn=caller.conn)
            await caller.commit()

    asyncio.run(main())
    drain(app, runs, admin, "sentinel")
    assert runs.tags() == ["sentinel"]


def test_psycopg_transaction_block_that_raises_takes_the_job_with_it(
        app: JobQueue, runs: Runs, pg_dsn: str, admin: Admin, accounts: str) -> None:
    async def main() -> None:
        async with await psycopg.AsyncConnection.connect(pg_dsn) as conn:
            with pytest.raises(RuntimeError):
                async with conn.transaction():
                    await app.enqueue_async("plain", {"n": 1}, conn=conn)
                    raise RuntimeError("the business logic fails after enqueueing")

    asyncio.run(main())
    assert count(admin, app.schema, "jobs") == 0


def test_without_conn_jobqueue_commits_on_its_own_async_connection(
        app: JobQueue, runs: Runs, admin: Admin) -> None:
    async def main() -> list[int]:
        try:
            one = await app.enqueue_async("record", {"tag": "own"})
            # Committed at once: another connection sees it before we go on.
            assert set(job_rows(admin, app.schema)) == {one}
            many = await app.enqueue_many_async([("record", {"tag": "m1"}),
                                                 ("record", {"tag": "m2"})])
            return [one, *many]
        finally:
            await app.aclose()  # the async pool belongs to this event loop

    ids = asyncio.run(main())
    assert set(job_rows(admin, app.schema)) == set(ids)
    drain(app, runs, admin, "own", "m1", "m2")
    assert sorted(runs.tags()) == ["m1", "m2", "own"]


# -- enqueue_many_async ----------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_enqueue_many_async_is_one_round_trip_with_ids_in_order(
        kind: str, app: JobQueue, runs: Runs, pg_dsn: str, admin: Admin, accounts: str) -> None:
    jobs = [("plain" if i % 3 else "record", {"tag": f"t{i}"}) for i in range(90)]

    async def main() -> tuple[list[int], list[int], list[int]]:
        async with open_caller(kind, pg_dsn, app.schema) as caller:
            # The once-per-app schema probe, paid before measuring.
            await app.enqueue_async("plain", {"tag": "warm"}, conn=caller.conn)
            await caller.add("bulk")  # the transaction is open: no BEGIN in the trace
            raw = await caller.raw()
            with traced(raw) as bulk:
                ids = await app.enqueue_many_async(jobs, conn=caller.conn)
            with traced(raw) as singles:
                await app.enqueue_async("plain", {"tag": "s1"}, conn=caller.conn)
                await app.enqueue_async("plain", {"tag": "s2"}, conn=caller.conn)
            assert raw.info.transaction_status == INTRANS
            await caller.commit()
            return ids, bulk, singles

    ids, bulk, singles = asyncio.run(main())
    assert bulk[0] == 1
    assert singles[0] == 2  # the instrument counts every statement
    stored = job_rows(admin, app.schema)
    assert len(stored) == 1 + 90 + 2
    assert [stored[i] for i in ids] == jobs


# -- refused jobs leave the transaction usable -------------------------------------------------

REFUSED: dict[str, tuple[str, Any, dict[str, Any]]] = {
    "set": ("plain", {"tags": {"a"}}, {}),
    "infinity": ("plain", {"x": float("inf")}, {}),
    "NUL": ("plain", {"s": "a\x00"}, {}),
    "int key": ("plain", {1: "a"}, {}),
    "oversize": ("plain", {"s": "x" * (64 * 1024)}, {}),
    "naive run_at": ("plain", {}, {"run_at": datetime(2030, 1, 1)}),
    "unknown task": ("nowhere.task", {}, {}),
}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("task", "args", "options"), REFUSED.values(), ids=REFUSED.keys())
def test_refused_job_sends_nothing_and_the_transaction_goes_on(
        kind: str, task: str, args: Any, options: dict[str, Any], app: JobQueue, runs: Runs,
        pg_dsn: str, admin: Admin, accounts: str) -> None:
    async def main() -> int:
        async with open_caller(kind, pg_dsn, app.schema) as caller:
            await caller.add("before")
            raw = await caller.raw()
            with traced(raw) as seen:
                with pytest.raises((PayloadError, UnknownTaskError)):
                    await app.enqueue_async(task, args, conn=caller.conn, **options)
                with pytest.raises((PayloadError, UnknownTaskError)):
                    await app.enqueue_many_async([("plain", {}), (task, args)],
                                                 conn=caller.conn, **options)
            assert seen == [0, 0]  # no round trip, not one message sent
            assert raw.info.transaction_status == INTRANS
            await caller.add("after")
            good = await app.enqueue_async("plain", {"ok": True}, conn=caller.conn)
            await caller.commit()
            return good

    good = asyncio.run(main())
    assert count(admin, app.schema, accounts) == 2
    assert job_rows(admin, app.schema) == {good: ("plain", {"ok": True})}


@pytest.mark.parametrize("kind", KINDS)
def test_strict_false_unique_key_and_options_through_async(
        kind: str, app: JobQueue, runs: Runs, pg_dsn: str, admin: Admin, accounts: str) -> None:
    async def main() -> tuple[int, int]:
        async with open_caller(kind, pg_dsn, app.schema) as caller:
            # The first statement of the transaction: it must still be the caller's to commit.
            other = await app.enqueue_async("billing.charge", {"order": 1}, conn=caller.conn,
                                            strict=False, queue="billing", priority=3, delay=45)
            first = await app.enqueue_async("plain", {"n": 1}, conn=caller.conn,
                                            unique_key="once")
            again = await app.enqueue_async("plain", {"n": 2}, conn=caller.conn,
                                            unique_key="once")
            assert again == first
            await caller.commit()
            return other, first

    other, first = asyncio.run(main())
    assert job_rows(admin, app.schema) == {other: ("billing.charge", {"order": 1}),
                                           first: ("plain", {"n": 1})}
    row = admin.execute(sql.SQL("SELECT queue, priority, extract(epoch FROM run_at - created_at)"
                                "::float8 FROM {} WHERE id = %s")
                        .format(sql.Identifier(app.schema, "jobs")), [other]).fetchone()
    assert row == ("billing", 3, 45.0)


# -- schema not migrated, wrong connection kinds ---------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_unmigrated_schema_is_reported_and_the_transaction_goes_on(
        kind: str, pg_dsn: str, schema: str, admin: Admin) -> None:
    # The business table exists; the jobqueue tables in that schema do not.
    admin.execute(sql.SQL("CREATE SCHEMA {s}; CREATE TABLE {t} (id serial PRIMARY KEY,"
                          " name text NOT NULL)")
                  .format(s=sql.Identifier(schema), t=sql.Identifier(schema, "accounts")))
    app = JobQueue(pg_dsn, schema=schema)
    app.task(name="plain")(lambda: None)

    async def main() -> None:
        try:
            async with open_caller(kind, pg_dsn, schema) as caller:
                await caller.add("before")
                with pytest.raises(SchemaNotMigratedError, match="jobqueue migrate"):
                    await app.enqueue_async("plain", conn=caller.conn)
                assert (await caller.raw()).info.transaction_status == INTRANS
                await caller.add("after")
                await caller.commit()
            with pytest.raises(SchemaNotMigratedError):
                await app.enqueue_async("plain")  # jobqueue's own pool says the same
        finally:
            await app.aclose()

    asyncio.run(main())
    assert count(admin, schema, "accounts") == 2


def test_sync_and_async_connections_are_not_interchangeable(
        app: JobQueue, runs: Runs, pg_dsn: str, admin: Admin) -> None:
    sync_engine = create_engine("postgresql+psycopg://", creator=lambda: psycopg.connect(pg_dsn))

    async def main() -> None:
        async with await psycopg.AsyncConnection.connect(pg_dsn) as aconn:
            with pytest.raises(UnsupportedConnectionError, match="enqueue_async"):
                app.enqueue("plain", conn=aconn)
        async with open_caller("SQLAlchemy AsyncSession", pg_dsn, app.schema) as caller:
            with pytest.raises(UnsupportedConnectionError):
                app.enqueue("plain", conn=caller.conn)
        with psycopg.connect(pg_dsn) as conn, \
                pytest.raises(UnsupportedConnectionError, match="enqueue\\(\\)"):
            await app.enqueue_async("plain", conn=conn)
        with Session(sync_engine) as session, pytest.raises(UnsupportedConnectionError):
            await app.enqueue_async("plain", conn=session)

    try:
        asyncio.run(main())
    finally:
        sync_engine.dispose()
    assert count(admin, app.schema, "jobs") == 0


def test_sqlalchemy_async_engine_begin_block_commits_the_job(
        app: JobQueue, runs: Runs, pg_dsn: str, admin: Admin) -> None:
    # The block's exit commits the transaction jobqueue wrote into.
    async def main() -> int:
        engine = create_async_engine(
            "postgresql+psycopg://",
            async_creator=lambda: psycopg.AsyncConnection.connect(pg_dsn))
        try:
            async with engine.begin() as conn:
                assert isinstance(conn, AsyncConnection)
                return await app.enqueue_async("plain", {"via": "engine.begin()"}, conn=conn)
        finally:
            await engine.dispose()

    job_id = asyncio.run(main())
    assert job_rows(admin, app.schema) == {job_id: ("plain", {"via": "engine.begin()"})}
