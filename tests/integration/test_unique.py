"""Unique jobs: a ``unique_key`` is held by at most one live (queued or running) job.

The second enqueue of a live key returns the existing job's id, or raises
``jobqueue.DuplicateJobError`` (carrying that id) when the caller asks for it;
either way the caller's transaction stays usable. Two transactions enqueueing
one key at the same time are decided by Postgres's unique index: the later
INSERT waits for the earlier transaction and then either dedups onto its job
(commit) or inserts its own (rollback). If the job holding the key finishes
between the INSERT that found it and the lookup of its id, the enqueue inserts
again instead of failing. Once a job has finished, its key is free again.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from jobqueue import DatabaseError, DuplicateJobError, JobQueue
from tests.helpers import count, wait_until, worker_thread

Conn = psycopg.Connection[Any]


@pytest.fixture
def tasks(app: JobQueue) -> list[int]:
    """Registers ``noop`` (its runs are recorded by job args) on ``app``."""
    ran: list[int] = []

    @app.task()
    def noop(n: int = 0) -> None:
        ran.append(n)

    return ran


def live_jobs(admin: Conn, schema: str) -> dict[int, tuple[str | None, dict[str, Any]]]:
    rows = admin.execute(sql.SQL("SELECT id, unique_key, args FROM {} ORDER BY id")
                         .format(sql.Identifier(schema, "jobs"))).fetchall()
    return {r[0]: (r[1], r[2]) for r in rows}


def blocked_on_lock(admin: Conn, pid: int) -> bool:
    row = admin.execute("SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s",
                        [pid]).fetchone()
    return row is not None and row[0] == "Lock"


class Enqueuer(threading.Thread):
    """A transaction in a thread: BEGIN, enqueue, then wait for the test's verdict."""

    def __init__(self, app: JobQueue, dsn: str, n: int, *, raise_on_duplicate: bool) -> None:
        super().__init__(daemon=True)
        self.app, self.dsn, self.n = app, dsn, n
        self.raise_on_duplicate = raise_on_duplicate
        self.pid: int | None = None
        self.job_id: int | None = None
        self.error: BaseException | None = None
        self.enqueued = threading.Event()
        self.verdict: str | None = None
        self._decided = threading.Event()

    def run(self) -> None:
        try:
            with psycopg.connect(self.dsn) as conn:
                self.pid = conn.info.backend_pid
                try:
                    self.job_id = self.app.enqueue(
                        "noop", {"n": self.n}, conn=conn, unique_key="order:7",
                        raise_on_duplicate=self.raise_on_duplicate)
                except DuplicateJobError as exc:
                    self.error = exc
                    # The duplicate was refused without a failed statement: the
                    # caller's transaction is still usable.
                    conn.execute("SELECT 1")
                self.enqueued.set()
                self._decided.wait(30)
                if self.verdict == "commit":
                    conn.commit()
                else:
                    conn.rollback()
        except BaseException as exc:  # noqa: BLE001 - inspected by the test thread
            self.error = exc
            self.enqueued.set()

    def finish(self, verdict: str) -> None:
        self.verdict = verdict
        self._decided.set()
        self.join(30)
        assert not self.is_alive()


@pytest.mark.parametrize("raise_on_duplicate", [False, True])
@pytest.mark.parametrize("first_outcome", ["commit", "rollback"])
def test_one_key_in_two_concurrent_transactions_is_one_job(
        first_outcome: str, raise_on_duplicate: bool, app: JobQueue, tasks: list[int],
        pg_dsn: str, admin: Conn) -> None:
    first = Enqueuer(app, pg_dsn, 1, raise_on_duplicate=raise_on_duplicate)
    second = Enqueuer(app, pg_dsn, 2, raise_on_duplicate=raise_on_duplicate)
    first.start()
    assert first.enqueued.wait(20) and first.error is None and first.job_id is not None
    second.start()
    # Both transactions are open: the second INSERT waits on the first's index entry.
    wait_until(lambda: second.pid is not None and blocked_on_lock(admin, second.pid),
               message="the second enqueue to wait for the first transaction")
    assert not second.enqueued.is_set()
    assert live_jobs(admin, app.schema) == {}  # nothing is visible before a commit

    first.finish(first_outcome)
    assert second.enqueued.wait(20)
    second.finish("commit")

    jobs = live_jobs(admin, app.schema)
    if first_outcome == "commit":
        assert jobs == {first.job_id: ("order:7", {"n": 1})}
        if raise_on_duplicate:
            assert isinstance(second.error, DuplicateJobError)
            assert second.error.job_id == first.job_id and second.job_id is None
        else:
            assert second.error is None and second.job_id == first.job_id
    else:
        # The first never existed: the second must hold a job of its own.
        assert second.error is None and second.job_id is not None
        assert second.job_id != first.job_id
        assert jobs == {second.job_id: ("order:7", {"n": 2})}


def test_raise_on_duplicate_in_one_transaction_keeps_it_usable(
        app: JobQueue, tasks: list[int], conn: Conn, admin: Conn) -> None:
    first = app.enqueue("noop", {"n": 1}, conn=conn, unique_key="k")
    with pytest.raises(DuplicateJobError) as caught:
        app.enqueue("noop", {"n": 2}, conn=conn, unique_key="k", raise_on_duplicate=True)
    assert caught.value.job_id == first
    assert "k" in str(caught.value)
    other = app.enqueue("noop", {"n": 3}, conn=conn, unique_key="other")
    conn.commit()
    assert live_jobs(admin, app.schema) == {first: ("k", {"n": 1}), other: ("other", {"n": 3})}
    # Through jobqueue's own pool, against the committed job.
    with pytest.raises(DuplicateJobError) as caught:
        app.enqueue("noop", {"n": 4}, unique_key="k", raise_on_duplicate=True)
    assert caught.value.job_id == first
    assert app.enqueue("noop", {"n": 5}, unique_key="k") == first
    assert count(admin, app.schema, "jobs") == 2


def test_raise_on_duplicate_async(app: JobQueue, tasks: list[int], pg_dsn: str,
                                  admin: Conn) -> None:
    async def scenario() -> tuple[int, int, int]:
        async with await psycopg.AsyncConnection.connect(pg_dsn) as aconn:
            first = await app.enqueue_async("noop", {"n": 1}, conn=aconn, unique_key="a")
            same = await app.enqueue_async("noop", {"n": 2}, conn=aconn, unique_key="a")
            try:
                await app.enqueue_async("noop", {"n": 3}, conn=aconn, unique_key="a",
                                        raise_on_duplicate=True)
            except DuplicateJobError as exc:
                refused = exc.job_id
            else:
                raise AssertionError("no DuplicateJobError")
            await aconn.commit()
        return first, same, refused

    first, same, refused = asyncio.run(scenario())
    app.close()
    assert same == refused == first
    assert live_jobs(admin, app.schema) == {first: ("a", {"n": 1})}


def test_key_is_free_again_once_the_job_finished(
        app: JobQueue, tasks: list[int], admin: Conn) -> None:
    first = app.enqueue("noop", {"n": 1}, unique_key="daily")
    with worker_thread(app):
        wait_until(lambda: tasks == [1], message="the first job to run")
        wait_until(lambda: count(admin, app.schema, "jobs") == 0, message="its ack")
        second = app.enqueue("noop", {"n": 2}, unique_key="daily", raise_on_duplicate=True)
        assert second != first
        wait_until(lambda: tasks == [1, 2], message="the second job to run")


class HookedCursor(psycopg.Cursor[Any]):
    """Runs its connection's hooks after the statements that matter (see below)."""

    def execute(self, query: Any, params: Any = None, **kwargs: Any) -> Any:
        cur = super().execute(query, params, **kwargs)
        conn = self.connection
        assert isinstance(conn, HookedConnection)
        text = query.as_string(conn) if isinstance(query, sql.Composable) else str(query)
        if cur.rowcount == 0 and "ON CONFLICT (unique_key)" in text:
            type(conn).conflicts += 1
            conn.after_conflict()
        elif cur.rowcount == 0 and "WHERE unique_key =" in text:
            conn.after_miss()
        return cur


class HookedConnection(psycopg.Connection[Any]):
    """A real connection that runs ``after_conflict`` when an enqueue INSERT found the
    key taken, before jobqueue looks up the job holding it (the moment that job may
    finish in another session), and ``after_miss`` when that lookup found nothing."""

    after_conflict: Callable[[], object] = staticmethod(lambda: None)
    after_miss: Callable[[], object] = staticmethod(lambda: None)
    conflicts = 0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.cursor_factory = HookedCursor


@pytest.fixture
def hooked() -> Iterator[type[HookedConnection]]:
    class Hooked(HookedConnection):
        pass

    yield Hooked


def finish_holder(admin: Conn, schema: str) -> Callable[[], object]:
    """The job holding key "k" finishes: its row is deleted, committed."""
    return lambda: admin.execute(sql.SQL("DELETE FROM {} WHERE unique_key = 'k'")
                                 .format(sql.Identifier(schema, "jobs")))


def new_holder(admin: Conn, schema: str) -> Callable[[], object]:
    """Another producer enqueues key "k" (committed)."""
    return lambda: admin.execute(sql.SQL("INSERT INTO {} (queue, task, unique_key) "
                                         "VALUES ('default', 'noop', 'k')")
                                 .format(sql.Identifier(schema, "jobs")))


def test_holder_finishing_between_insert_and_lookup_inserts_again(
        app: JobQueue, tasks: list[int], pg_dsn: str, admin: Conn,
        hooked: type[HookedConnection]) -> None:
    holder = app.enqueue("noop", {"n": 1}, unique_key="k")
    hooked.after_conflict = staticmethod(finish_holder(admin, app.schema))
    with hooked.connect(pg_dsn) as conn:
        job_id = app.enqueue("noop", {"n": 2}, conn=conn, unique_key="k",
                             raise_on_duplicate=True)
        conn.commit()
    assert hooked.conflicts == 1  # the race really happened, once
    assert job_id != holder
    assert live_jobs(admin, app.schema) == {job_id: ("k", {"n": 2})}


def test_key_that_keeps_changing_hands_fails_cleanly(
        app: JobQueue, tasks: list[int], pg_dsn: str, admin: Conn,
        hooked: type[HookedConnection]) -> None:
    app.enqueue("noop", {"n": 1}, unique_key="k")
    # Each holder finishes just after our INSERT saw it, and a new one takes
    # the key just after our lookup missed it: every attempt loses the race.
    hooked.after_conflict = staticmethod(finish_holder(admin, app.schema))
    hooked.after_miss = staticmethod(new_holder(admin, app.schema))
    with hooked.connect(pg_dsn) as conn:
        with pytest.raises(DatabaseError, match="enqueue again"):
            app.enqueue("noop", {"n": 2}, conn=conn, unique_key="k")
        assert hooked.conflicts == 3  # it tried a bounded number of times
        # No statement failed: the caller's transaction is still usable.
        conn.execute("SELECT 1")
        conn.rollback()
    assert [key for key, _ in live_jobs(admin, app.schema).values()] == ["k"]
