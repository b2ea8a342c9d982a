"""The Store on a real Postgres: rows by name, one error type, procedures, transactions.

Statements come from ``sql/queries.sql`` like everywhere else; the tests use a few
harmless ones (``version_table_probe``, ``job_is_live``, ``dead_count``) and the
jobqueue tables of a migrated schema.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest

from jobqueue import DatabaseError, JobQueue
from jobqueue.config import Settings
from jobqueue.db import jobs
from jobqueue.db.statement import InPipeline, Op, Pipeline, Procedure, in_transaction, row, scalar
from jobqueue.db.store import AsyncStore, Store
from jobqueue.errors import SchemaNotMigratedError
from tests.helpers import count, wait_until


@dataclass(frozen=True)
class Present:
    present: bool


@dataclass(frozen=True)
class Other:
    missing: bool


def test_rows_are_built_by_column_name(app: JobQueue) -> None:
    found = app.store.run(row("version_table_probe", {"table": "pg_class"}, Present))
    assert found == Present(present=True)
    with pytest.raises(TypeError, match="present"):
        # A row class without a field of the column's name fails at once.
        app.store.run(row("version_table_probe", {"table": "pg_class"}, Other))


def test_a_psycopg_error_leaves_as_one_database_error(app: JobQueue) -> None:
    with pytest.raises(DatabaseError, match=r"^database error: .*bigint") as err:
        app.store.run(scalar("job_is_live", {"id": "not a number"}))
    assert isinstance(err.value.__cause__, psycopg.Error)
    assert "\n" not in str(err.value)


def test_an_unreachable_database_is_one_line(pg_dsn: str, migrated: str) -> None:
    dead = psycopg.conninfo.make_conninfo(pg_dsn, host="127.0.0.1", port="1")
    store = Store(Settings(dead, migrated, connect_timeout=1.0))
    with pytest.raises(DatabaseError, match=r"^database unavailable: "):
        store.run(jobs.is_live(1))
    store.close()


def test_an_unmigrated_schema_is_named_before_any_statement_fails(
        pg_dsn: str, schema: str, conn: psycopg.Connection[Any]) -> None:
    store = Store(Settings(pg_dsn, schema))
    with pytest.raises(SchemaNotMigratedError, match=schema):
        store.run(jobs.is_live(1), conn)
    conn.execute("SELECT 1")  # the caller's transaction is still usable
    store.close()


def test_the_callers_transaction_is_never_committed(app: JobQueue, pg_dsn: str,
                                                    admin: psycopg.Connection[Any]) -> None:
    with psycopg.connect(pg_dsn) as conn:
        app.enqueue("t", strict=False, conn=conn)
        assert count(conn, app.schema, "jobs") == 1
        assert count(admin, app.schema, "jobs") == 0
        conn.rollback()
    assert count(admin, app.schema, "jobs") == 0


def _cancel_then_fail(job_id: int) -> Procedure[None]:
    outcome = yield from jobs.cancel(job_id, "jobqueue.x.control", "jobqueue.x.outcome")
    assert outcome == "cancelled"
    yield scalar("job_is_live", {"id": "boom"})  # fails after the cancel changed rows


def test_a_transaction_step_is_a_savepoint_inside_the_callers(app: JobQueue,
                                                              pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn) as conn:
        job_id = app.enqueue("t", strict=False, conn=conn)
        with pytest.raises(DatabaseError):
            app.store.run(in_transaction(_cancel_then_fail(job_id)), conn)
        # Only the savepoint rolled back: the caller's transaction goes on, with
        # its job, and the cancel the failed procedure made is undone.
        assert app.store.run(jobs.is_live(job_id), conn) is True
        assert count(conn, app.schema, "dead_jobs") == 0
        conn.rollback()


def test_pipeline_and_in_pipeline_steps(app: JobQueue) -> None:
    job_id = app.enqueue("t", strict=False)

    def both() -> Procedure[tuple[list[Any], bool]]:
        results: list[Any] = yield Pipeline((jobs.is_live(job_id), jobs.is_live(job_id + 99)))
        piped: bool = yield InPipeline()
        return results, piped

    assert app.store.run(both()) == ([True, False], False)


def test_the_async_face_runs_the_same_procedures(app: JobQueue) -> None:
    job_id = app.enqueue("t", strict=False)

    async def main() -> tuple[bool, bool]:
        store = AsyncStore(app.settings)
        try:
            live = await store.run(jobs.is_live(job_id))
            gone = await store.run(jobs.cancel(job_id, "jobqueue.x.control", "jobqueue.x.outcome"))
            return live, gone == "cancelled"
        finally:
            await store.aclose()

    assert asyncio.run(main()) == (True, True)


def test_ops_are_values() -> None:
    op = jobs.is_live(5)
    assert op == Op("job_is_live", {"id": 5}, op.fetch) and op.row is None


def _terminate_producers(admin: psycopg.Connection[Any]) -> int:
    """End every producer session of this database (the pools' connections)."""
    pids = [r[0] for r in admin.execute(
        "SELECT pid FROM pg_stat_activity WHERE application_name = 'jobqueue-producer' "
        "AND datname = current_database()").fetchall()]
    for pid in pids:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
    wait_until(lambda: admin.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s)",
                                     (pids,)).fetchone() == (0,), message="the backends to end")
    return len(pids)


def test_a_pooled_connection_the_server_closed_is_not_lent(
        app: JobQueue, admin: psycopg.Connection[Any]) -> None:
    first = app.enqueue("t", strict=False)  # the pool now holds live connections
    assert _terminate_producers(admin) >= 1
    # The pool's check sees the closed socket without a round trip and lends
    # another connection: the first enqueue after it succeeds.
    second = app.enqueue("t", strict=False)
    assert count(admin, app.schema, "jobs") == 2 and second > first


def test_the_async_pool_does_not_lend_a_closed_connection(
        app: JobQueue, admin: psycopg.Connection[Any]) -> None:
    async def main() -> int:
        first = await app.enqueue_async("t", strict=False)
        assert await asyncio.to_thread(_terminate_producers, admin) >= 1
        second = await app.enqueue_async("t", strict=False)
        await app.aclose()
        return second - first

    assert asyncio.run(main()) > 0
    assert count(admin, app.schema, "jobs") == 2
