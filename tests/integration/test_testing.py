"""jobqueue.testing against real Postgres: drain, enqueued and the inline mode.

The handlers count their runs in this process (the helpers run jobs
in-process, which is their point); the tables say what is left.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from sqlalchemy import create_engine
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import Session

from jobqueue import JobQueue, Retry, chain
from jobqueue.testing import (
    Drained,
    DrainError,
    drain,
    drain_async,
    enqueued,
    enqueued_async,
    inline,
)
from tests.helpers import count


@pytest.fixture
def runs(app: JobQueue) -> Iterator[Counter[str]]:
    """The app's tasks, each counting its runs (by name, or name:arg)."""
    seen: Counter[str] = Counter()
    fails_left = {"n": 2}

    @app.task
    def hello(name: str) -> str:
        seen[f"hello:{name}"] += 1
        return f"hello {name}"

    # A backoff of a minute: a drain that waited for it would time the test out.
    @app.task(retry=Retry(base=60, jitter=False), max_attempts=5)
    def flaky() -> str:
        seen["flaky"] += 1
        if fails_left["n"]:
            fails_left["n"] -= 1
            raise RuntimeError("not yet")
        return "made it"

    @app.task(retry=Retry(base=60), max_attempts=3)
    def broken() -> None:
        seen["broken"] += 1
        raise ValueError("always")

    @app.task(queue="other")
    async def elsewhere(n: int) -> int:
        seen[f"elsewhere:{n}"] += 1
        return n

    @app.task
    def parent(n: int) -> None:
        seen[f"parent:{n}"] += 1
        app.enqueue(hello, {"name": f"child of {n}"})

    @app.task
    def forever() -> None:
        seen["forever"] += 1
        app.enqueue(forever)

    yield seen


def test_drain_runs_everything_ready_retries_included_and_counts_outcomes(
        app: JobQueue, runs: Counter[str], conn: psycopg.Connection[Any]) -> None:
    app.enqueue("hello", {"name": "a"})
    app.enqueue("hello", {"name": "b"})
    app.enqueue("flaky")
    app.enqueue("broken")
    app.enqueue("elsewhere", {"n": 1})
    started = time.monotonic()
    assert drain(app) == Drained(succeeded=4, retried=4, dead=1)
    # Four retries of a minute's backoff each, made due at once.
    assert time.monotonic() - started < 30
    assert runs == Counter({"hello:a": 1, "hello:b": 1, "flaky": 3, "broken": 3,
                            "elsewhere:1": 1})
    assert count(conn, app.schema, "jobs") == 0
    assert count(conn, app.schema, "dead_jobs") == 1
    assert drain(app) == Drained()  # idle: nothing more to run


def test_drain_leaves_scheduled_jobs_and_other_queues_unless_asked(
        app: JobQueue, runs: Counter[str], conn: psycopg.Connection[Any]) -> None:
    app.enqueue("hello", {"name": "later"}, delay=3600)
    app.enqueue("elsewhere", {"n": 2})
    app.enqueue("hello", {"name": "now"})
    assert drain(app, queues=["default"]) == Drained(succeeded=1)
    assert runs == Counter({"hello:now": 1})
    assert drain(app) == Drained(succeeded=1)
    assert runs["elsewhere:2"] == 1
    assert count(conn, app.schema, "jobs") == 1  # still scheduled for an hour from now
    assert drain(app, scheduled=True) == Drained(succeeded=1)
    assert runs["hello:later"] == 1


def test_drain_runs_a_workflow_to_its_end(app: JobQueue, runs: Counter[str]) -> None:
    app.enqueue_workflow(chain(app.sig("hello", {"name": "first"}),
                               app.sig("hello", {"name": "second"})))
    assert drain(app) == Drained(succeeded=2)
    assert runs == Counter({"hello:first": 1, "hello:second": 1})


def test_drain_gives_up_on_a_job_that_keeps_enqueueing(
        app: JobQueue, runs: Counter[str]) -> None:
    app.enqueue("forever")
    started = time.monotonic()
    with pytest.raises(DrainError, match="not idle within the drain's timeout"):
        drain(app, timeout=2)
    assert time.monotonic() - started < 10
    assert runs["forever"] > 1
    # Stopped gracefully: the last run was acked, its successor is queued, none is lost.
    assert [j.state for j in enqueued(app, "forever")] == ["queued"]
    assert len(app.history(task="forever", limit=10_000)) == runs["forever"]


def test_drain_async_runs_in_the_callers_loop(app: JobQueue, runs: Counter[str]) -> None:
    async def main() -> Drained:
        try:
            await app.enqueue_async("elsewhere", {"n": 3})
            await app.enqueue_async("flaky")
            return await drain_async(app)
        finally:
            await app.aclose()

    assert asyncio.run(main()) == Drained(succeeded=2, retried=2)
    assert runs == Counter({"elsewhere:3": 1, "flaky": 3})


def test_enqueued_filters_by_task_queue_and_a_subset_of_args(
        app: JobQueue, runs: Counter[str], pg_dsn: str) -> None:
    a = app.enqueue("hello", {"name": "a"})
    b = app.enqueue("hello", {"name": "b"}, delay=60)
    c = app.enqueue("elsewhere", {"n": 1})
    assert [j.id for j in enqueued(app)] == [a, b, c]
    assert [j.id for j in enqueued(app, "hello")] == [a, b]
    assert [(j.id, j.state) for j in enqueued(app, app.get_task("hello"),
                                               args={"name": "b"})] == [(b, "scheduled")]
    assert [j.id for j in enqueued(app, queue="other")] == [c]
    assert enqueued(app, "hello", args={"name": "z"}) == []
    with psycopg.connect(pg_dsn) as mine:
        d = app.enqueue("hello", {"name": "d"}, conn=mine)
        # Only the enqueuing transaction sees its job before COMMIT.
        assert [j.id for j in enqueued(app, args={"name": "d"}, conn=mine)] == [d]
        assert enqueued(app, args={"name": "d"}) == []
        mine.rollback()

    async def main() -> list[int]:
        try:
            return [j.id for j in await enqueued_async(app, queue="other")]
        finally:
            await app.aclose()

    assert asyncio.run(main()) == [c]


def test_inline_runs_a_job_when_its_transaction_commits_and_never_on_rollback(
        app: JobQueue, runs: Counter[str], pg_dsn: str,
        conn: psycopg.Connection[Any]) -> None:
    with inline(app) as mode, psycopg.connect(pg_dsn) as mine:
        app.enqueue("hello", {"name": "committed"}, conn=mine)
        assert runs == Counter()  # not before the COMMIT
        mine.commit()
        assert runs == Counter({"hello:committed": 1})  # ran before commit() returned

        app.enqueue("hello", {"name": "rolled back"}, conn=mine)
        mine.rollback()
        with mine.transaction():  # a later commit of the same connection
            app.enqueue("hello", {"name": "block"}, conn=mine)
        assert runs == Counter({"hello:committed": 1, "hello:block": 1})

        app.enqueue("hello", {"name": "own connection"})  # committed by jobqueue: at once
        assert runs["hello:own connection"] == 1
        assert mode.drained == Drained(succeeded=3)
    assert count(conn, app.schema, "jobs") == 0
    assert count(conn, app.schema, "job_history") == 3


def test_inline_on_an_autocommit_connection_runs_before_enqueue_returns(
        app: JobQueue, runs: Counter[str], pg_dsn: str) -> None:
    with inline(app), psycopg.connect(pg_dsn, autocommit=True) as mine:
        app.enqueue("parent", {"n": 1}, conn=mine)
        # The parent's child, enqueued on jobqueue's own connection, ran inline too.
        assert runs == Counter({"parent:1": 1, "hello:child of 1": 1})
    app.enqueue("hello", {"name": "after"})
    assert runs["hello:after"] == 0  # outside the block: queued, not run
    assert [j.args for j in enqueued(app)] == [{"name": "after"}]


def test_inline_with_sqlalchemy_sessions(app: JobQueue, runs: Counter[str],
                                         pg_dsn: str) -> None:
    engine = create_engine(pg_dsn.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        with inline(app):
            with Session(engine) as session, session.begin():
                app.enqueue("hello", {"name": "orm"}, conn=session)
                assert runs == Counter()
            assert runs == Counter({"hello:orm": 1})
            with pytest.raises(RuntimeError), Session(engine) as session, session.begin():
                app.enqueue("hello", {"name": "orm rollback"}, conn=session)
                raise RuntimeError("the unit of work fails")
        assert runs == Counter({"hello:orm": 1})
    finally:
        engine.dispose()


def test_inline_async_with_psycopg_and_sqlalchemy(app: JobQueue, runs: Counter[str],
                                                  pg_dsn: str) -> None:
    async def main() -> None:
        engine = create_async_engine(pg_dsn.replace("postgresql://", "postgresql+psycopg://", 1))
        try:
            async with inline(app):
                async with await psycopg.AsyncConnection.connect(pg_dsn) as mine:
                    await app.enqueue_async("elsewhere", {"n": 1}, conn=mine)
                    assert runs == Counter()
                    await mine.commit()
                    assert runs == Counter({"elsewhere:1": 1})
                    await app.enqueue_async("elsewhere", {"n": 2}, conn=mine)
                    await mine.rollback()
                async with AsyncSession(engine) as session, session.begin():
                    await app.enqueue_async("elsewhere", {"n": 3}, conn=session)
                assert runs["elsewhere:3"] == 1
                await app.enqueue_async("elsewhere", {"n": 4})
                assert runs["elsewhere:4"] == 1
        finally:
            await engine.dispose()
            await app.aclose()

    asyncio.run(main())
    assert runs == Counter({"elsewhere:1": 1, "elsewhere:3": 1, "elsewhere:4": 1})


def test_made_due_retries_keep_their_attempts_and_errors(app: JobQueue, runs: Counter[str],
                                              conn: psycopg.Connection[Any]) -> None:
    # The drain's shortcut moves run_at only, and three rounds of work are allowed
    # by max_rounds=3: attempts and errors are the job's own.
    app.enqueue("flaky")
    assert drain(app, max_rounds=3) == Drained(succeeded=1, retried=2)
    [entry] = app.history(task="flaky")
    assert app.job(entry.id).attempts == 3
    assert len(app.job(entry.id).errors) == 2
    assert count(conn, app.schema, "jobs") == 0


def test_drain_stops_at_max_rounds_and_what_it_ran_stays_counted(
        app: JobQueue, runs: Counter[str], conn: psycopg.Connection[Any]) -> None:
    app.enqueue("broken")  # three attempts: three rounds
    with pytest.raises(DrainError, match=r"Drained\(succeeded=0, retried=2, dead=0\)"):
        drain(app, max_rounds=1)
    assert runs["broken"] == 2
    assert [j.attempts for j in enqueued(app, "broken")] == [2]
    assert drain(app) == Drained(dead=1)
    assert count(conn, app.schema, "dead_jobs") == 1


def test_the_readme_example_passes_under_pytest(pg_dsn: str, migrated: str,
                                                tmp_path: Any) -> None:
    from tests.readme import example

    (tmp_path / "test_signup.py").write_text(example("Testing your jobs"))
    env = {**os.environ, "JOBQUEUE_DSN": pg_dsn, "JOBQUEUE_SCHEMA": migrated}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "test_signup.py"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "3 passed" in done.stdout
