"""Backpressure: a queue's ``max_ready``, checked by enqueue.

- A full queue that rejects raises QueueFull before its insert is sent: nothing
  of the job, the batch or the workflow goes in, and the caller's transaction
  (psycopg sync and async, a SQLAlchemy session) goes on and commits its own
  writes.
- A full queue that warns takes the jobs, logs ``queue.over_limit`` at most once
  per interval and counts them (``app.over_limit_counts``, the collector).
- The cost, on the wire: an enqueue into a queue without a limit sends its insert
  alone while the cache of limited queues is fresh; the cache is read once per
  TTL (a fake clock moves it), and a limited queue costs one statement more.
- Clearing a limit lifts it at once; a limit set by another producer is seen
  within the TTL; a producer role granted before backpressure skips the check
  without breaking its transaction.
- The CLI sets and lists the limit, and refuses ``--reject`` alone in one line.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from psycopg import pq, sql
from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session
from structlog.testing import capture_logs

from jobqueue import JobQueue, JobQueueError, QueueFull, chain
from jobqueue.config import BACKPRESSURE_TTL, OVER_LIMIT_LOG_INTERVAL
from jobqueue.db import admin as admin_procedures
from jobqueue.metrics import EnqueueCollector
from tests.acceptance import support
from tests.helpers import count, make_role
from tests.readme import example

Conn = psycopg.Connection[Any]


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(app: JobQueue) -> Clock:
    fake = Clock()
    app.backpressure.clock = fake
    return fake


@pytest.fixture
def orders(app: JobQueue, admin: Conn) -> str:
    """A business table of the caller's, beside the jobs."""
    admin.execute(sql.SQL("CREATE TABLE {} (n int)").format(sql.Identifier(app.schema,
                                                                            "orders")))
    return "orders"


def add_order(conn: Conn, schema: str, n: int) -> None:
    conn.execute(sql.SQL("INSERT INTO {} VALUES (%s)").format(sql.Identifier(schema, "orders")),
                 (n,))


def fill(app: JobQueue, queue: str, n: int, **limits: Any) -> None:
    """``n`` ready jobs in ``queue``, then its limits."""
    app.enqueue_many([("t", {"i": i}) for i in range(n)], queue=queue, strict=False)
    app.queues.set_limits(queue, **limits)


@contextlib.contextmanager
def round_trips(conn: Conn) -> Iterator[list[int]]:
    """How many times the server answered ReadyForQuery on ``conn`` (one per statement
    sent on its own), read from libpq's trace; the count lands in the list on exit."""
    seen: list[int] = []
    with tempfile.TemporaryFile() as trace:
        conn.pgconn.trace(trace.fileno())
        conn.pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS | pq.Trace.REGRESS_MODE)
        try:
            yield seen
        finally:
            conn.pgconn.untrace()
            trace.seek(0)
            text = trace.read().decode("utf-8", "replace")
            seen.append(len(re.findall(r"^B\t\d+\tReadyForQuery", text, re.MULTILINE)))


# -- reject ---------------------------------------------------------------------------------


def test_a_full_rejecting_queue_raises_and_inserts_nothing(app: JobQueue, admin: Conn) -> None:
    fill(app, "q", 3, max_ready=3, reject_when_full=True)
    with pytest.raises(QueueFull, match=r"queue 'q' is full: 3 jobs ready, max_ready is 3; "
                                        r"nothing was enqueued") as caught:
        app.enqueue("t", {"i": 3}, queue="q", strict=False)
    assert (caught.value.queue, caught.value.max_ready, caught.value.ready) == ("q", 3, 3)
    assert isinstance(caught.value, JobQueueError)

    @app.task(queue="q")
    def full(**_: Any) -> None: ...

    @app.task(queue="free")
    def other(**_: Any) -> None: ...

    # A batch with one job for the full queue is refused whole, the other queue's jobs too.
    with pytest.raises(QueueFull):
        app.enqueue_many([(other, {}), (other, {}), (full, {})])
    with pytest.raises(QueueFull):
        app.enqueue_workflow(chain(app.sig(other), app.sig(full)))
    assert count(admin, app.schema, "jobs") == 3
    assert count(admin, app.schema, "jobs", "queue = 'free'") == 0
    # Other queues are not concerned.
    app.enqueue("t", queue="free", strict=False)


def test_ready_means_due_now_as_stats_counts_it(app: JobQueue, admin: Conn) -> None:
    app.queues.set_limits("q", max_ready=2, reject_when_full=True)
    # Delayed jobs (and retries waiting out their backoff) are not ready: they do not fill it.
    app.enqueue_many([("t", {})] * 5, queue="q", delay=3600, strict=False)
    app.enqueue_many([("t", {})] * 2, queue="q", strict=False)
    [q] = [s for s in app.stats() if s.queue == "q"]
    assert (q.queued, q.scheduled) == (2, 5)
    with pytest.raises(QueueFull, match="2 jobs ready"):
        app.enqueue("t", queue="q", strict=False)
    # The check counts no further than max_ready: a backlog far past it reads as max_ready.
    admin.execute(sql.SQL("INSERT INTO {} (queue, task) SELECT 'q', 't' "
                          "FROM generate_series(1, 5000)").format(
                              sql.Identifier(app.schema, "jobs")))
    with pytest.raises(QueueFull) as caught:
        app.enqueue("t", queue="q", strict=False)
    assert caught.value.ready == 2


def test_the_callers_transaction_survives_queue_full(
        app: JobQueue, pg_dsn: str, admin: Conn, orders: str) -> None:
    fill(app, "q", 1, max_ready=1, reject_when_full=True)
    with psycopg.connect(pg_dsn) as conn:
        add_order(conn, app.schema, 1)
        with pytest.raises(QueueFull):
            app.enqueue("t", queue="q", conn=conn, strict=False)
        with pytest.raises(QueueFull):
            app.enqueue_many([("t", {})] * 2000, queue="q", conn=conn, strict=False)  # COPY
        assert conn.info.transaction_status == pq.TransactionStatus.INTRANS
        add_order(conn, app.schema, 2)
        app.enqueue("t", queue="free", conn=conn, strict=False)
        conn.commit()
    assert count(admin, app.schema, orders) == 2
    assert count(admin, app.schema, "jobs", "queue = 'q'") == 1
    assert count(admin, app.schema, "jobs", "queue = 'free'") == 1


def test_the_callers_async_transaction_survives_queue_full(
        app: JobQueue, pg_dsn: str, admin: Conn, orders: str) -> None:
    fill(app, "q", 1, max_ready=1, reject_when_full=True)
    table = sql.Identifier(app.schema, orders)

    async def main() -> None:
        async with await psycopg.AsyncConnection.connect(pg_dsn) as conn:
            await conn.execute(sql.SQL("INSERT INTO {} VALUES (1)").format(table))
            with pytest.raises(QueueFull):
                await app.enqueue_async("t", queue="q", conn=conn, strict=False)
            with pytest.raises(QueueFull):
                await app.enqueue_many_async([("t", {})] * 3, queue="q", conn=conn,
                                             strict=False)
            await conn.execute(sql.SQL("INSERT INTO {} VALUES (2)").format(table))
            await app.enqueue_async("t", queue="free", conn=conn, strict=False)
            await conn.commit()

    asyncio.run(main())
    assert count(admin, app.schema, orders) == 2
    assert count(admin, app.schema, "jobs") == 2


def test_a_sqlalchemy_transaction_survives_queue_full(
        app: JobQueue, pg_dsn: str, admin: Conn, orders: str) -> None:
    fill(app, "q", 1, max_ready=1, reject_when_full=True)
    engine = create_engine(pg_dsn.replace("postgresql://", "postgresql+psycopg://", 1))
    insert = text(f'INSERT INTO "{app.schema}".orders VALUES (:n)')
    try:
        with Session(engine) as session:
            session.execute(insert, {"n": 1})
            with pytest.raises(QueueFull):
                app.enqueue("t", queue="q", conn=session, strict=False)
            session.execute(insert, {"n": 2})
            session.commit()
    finally:
        engine.dispose()
    assert count(admin, app.schema, orders) == 2
    assert count(admin, app.schema, "jobs") == 1


# -- warn -----------------------------------------------------------------------------------


def test_a_full_warning_queue_takes_the_jobs_warns_and_counts(
        app: JobQueue, admin: Conn, clock: Clock) -> None:
    fill(app, "q", 2, max_ready=2)
    with capture_logs() as logs:
        app.enqueue("t", queue="q", strict=False)
        app.enqueue_many([("t", {})] * 2, queue="q", strict=False)
        app.enqueue("t", queue="free", strict=False)  # no limit: not counted
    assert count(admin, app.schema, "jobs", "queue = 'q'") == 5
    over = [e for e in logs if e["event"] == "queue.over_limit"]
    # Once per interval per queue: the second enqueue was counted, not logged.
    assert [(e["log_level"], e["queue"], e["max_ready"], e["ready"], e["jobs"])
            for e in over] == [("warning", "q", 2, 2, 1)]
    assert app.over_limit_counts == {"q": 3}

    clock.now += OVER_LIMIT_LOG_INTERVAL
    with capture_logs() as logs:
        app.enqueue("t", queue="q", strict=False)
    assert [(e["jobs"], e["unlogged_jobs"]) for e in logs
            if e["event"] == "queue.over_limit"] == [(1, 2)]
    assert app.over_limit_counts == {"q": 4}

    registry = CollectorRegistry()
    registry.register(EnqueueCollector(app))
    assert 'jobqueue_enqueue_over_limit_total{queue="q"} 4.0' in \
        generate_latest(registry).decode()


def test_the_limits_are_validated_and_listed(app: JobQueue) -> None:
    with pytest.raises(JobQueueError, match="max_ready must be >= 1"):
        app.queues.set_limits("q", max_ready=0)
    with pytest.raises(JobQueueError, match="reject_when_full needs max_ready"):
        app.queues.set_limits("q", reject_when_full=True)
    app.queues.set_limits("q", max_running=2, max_ready=10, reject_when_full=True)
    [q] = app.queues.settings()
    assert (q.max_running, q.max_ready, q.reject_when_full, q.limited) == (2, 10, True, True)
    # Like the other limits, what a call does not give is cleared.
    app.queues.set_limits("q", max_ready=10)
    [q] = app.queues.settings()
    assert (q.max_running, q.max_ready, q.reject_when_full, q.limited) == \
        (None, 10, False, False)  # max_ready limits enqueue, not claims


# -- the cost and the cache -----------------------------------------------------------------


def test_an_unlimited_queue_pays_no_extra_round_trip(
        app: JobQueue, conn: Conn, clock: Clock) -> None:
    # psycopg prepares a statement at its 5th run, a round trip of its own: not counted here.
    conn.prepare_threshold = None
    app.queues.set_limits("busy", max_ready=1000)
    app.enqueue("t", queue="free", conn=conn, strict=False)  # the once-per-app probes
    reads = app.backpressure.reads
    assert app.backpressure.limited == {"busy"}

    with round_trips(conn) as free:
        for _ in range(5):
            app.enqueue("t", queue="free", conn=conn, strict=False)
        app.enqueue_many([("t", {})] * 50, queue="free", conn=conn, strict=False)
    assert free == [6]  # its inserts alone
    assert app.backpressure.reads == reads

    with round_trips(conn) as busy:
        app.enqueue("t", queue="busy", conn=conn, strict=False)
    assert busy == [2]  # the capped count, then the insert
    assert app.backpressure.reads == reads + 1

    # Stale after the TTL: the next enqueue reads the limits again, once.
    clock.now += BACKPRESSURE_TTL
    with round_trips(conn) as stale:
        app.enqueue("t", queue="free", conn=conn, strict=False)
        app.enqueue("t", queue="free", conn=conn, strict=False)
    assert stale == [3]
    assert app.backpressure.reads == reads + 2
    conn.commit()


def test_clearing_a_limit_lifts_it_and_another_producers_limit_is_seen_within_the_ttl(
        app: JobQueue, pg_dsn: str, clock: Clock) -> None:
    fill(app, "q", 1, max_ready=1, reject_when_full=True)
    with pytest.raises(QueueFull):
        app.enqueue("t", queue="q", strict=False)
    app.queues.set_limits("q")  # this app's own change: at once
    app.enqueue("t", queue="q", strict=False)

    # Another process sets the limit: this producer, its cache fresh, has not heard yet ...
    other = JobQueue(pg_dsn, schema=app.schema)
    try:
        other.queues.set_limits("q", max_ready=1, reject_when_full=True)
        app.enqueue("t", queue="q", strict=False)
        clock.now += BACKPRESSURE_TTL  # ... and enforces it once its cache is stale.
        with pytest.raises(QueueFull):
            app.enqueue("t", queue="q", strict=False)
        # Cleared elsewhere: lifted at the next enqueue (the check reads the limit afresh).
        other.queues.set_limits("q")
        app.enqueue("t", queue="q", strict=False)
    finally:
        other.close()


@pytest.fixture
def old_producer(pg_dsn: str, app: JobQueue) -> Iterator[str]:
    """A role with the producer rights of before backpressure (no read of the limits)."""
    roles = make_role(pg_dsn)
    role = next(roles)
    grants = [g for g in admin_procedures.GRANTS["producer"]
              if g != "grant_producer_backpressure"]
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        for name in grants:
            conn.execute(app_sql(app, name, role))
    yield role
    next(roles, None)  # drops it


def app_sql(app: JobQueue, name: str, role: str) -> sql.Composed:
    from jobqueue import sql as statements

    return statements.compose(name, app.schema, role=role)


def test_a_producer_granted_before_backpressure_enqueues_without_the_check(
        app: JobQueue, pg_dsn: str, old_producer: str, orders: str, admin: Conn) -> None:
    fill(app, "q", 1, max_ready=1, reject_when_full=True)
    admin.execute(sql.SQL("GRANT INSERT ON {} TO {}").format(
        sql.Identifier(app.schema, orders), sql.Identifier(old_producer)))
    dsn = support.dsn_with(pg_dsn, user=old_producer)
    producer = JobQueue(dsn, schema=app.schema)
    try:
        with psycopg.connect(dsn) as conn, capture_logs() as logs:
            add_order(conn, app.schema, 1)
            producer.enqueue("t", queue="q", conn=conn, strict=False)  # not checked
            add_order(conn, app.schema, 2)
            conn.commit()
        assert [e["event"] for e in logs if e["event"].startswith("queue.")] == \
            ["queue.limits_unreadable"]
        assert count(admin, app.schema, orders) == 2
        # Granted the producer's rights of today, a producer enforces the limit.
        app.grant(old_producer)
        fresh = JobQueue(dsn, schema=app.schema)
        try:
            with pytest.raises(QueueFull):
                fresh.enqueue("t", queue="q", strict=False)
        finally:
            fresh.close()
    finally:
        producer.close()


# -- the README and the CLI -----------------------------------------------------------------


def test_the_documented_signup_example(
        pg_dsn: str, migrated: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOBQUEUE_DSN", pg_dsn)
    monkeypatch.setenv("JOBQUEUE_SCHEMA", migrated)
    namespace: dict[str, Any] = {}
    exec(compile(example("Backpressure"), "README.md#Backpressure", "exec"), namespace)
    app: JobQueue = namespace["app"]
    try:
        app.queues.set_limits("emails", max_ready=1, reject_when_full=True)
        with psycopg.connect(pg_dsn) as conn:
            conn.execute("CREATE TEMP TABLE users (email text)")
            conn.commit()
            assert namespace["signup"](conn, "ada@example.com") == (201, "welcome")
            status, _ = namespace["signup"](conn, "bob@example.com")
            assert status == 503
            # Bob's user row went back with his refused email; Ada's stayed.
            assert conn.execute("SELECT email FROM users").fetchall() == [("ada@example.com",)]
    finally:
        app.close()


def test_the_cli_sets_and_lists_max_ready(
        pg_dsn: str, migrated: str, tmp_path: Path) -> None:
    cli = support.Cli(support.cli_env(pg_dsn, migrated, tmp_path / "home"))
    out = cli.ok("queue", "limit", "q", "--max-ready", "5", "--reject")
    assert out.strip() == "queue 'q': no concurrency limit, no rate limit, " \
                          "max ready 5 (rejects when full)"
    assert json.loads(cli.ok("queue", "list", "--json")) == [{
        "name": "q", "paused": False, "max_running": None, "rate_limit": None,
        "rate_period": None, "max_ready": 5, "reject_when_full": True}]
    header, _, line = [re.split(r"\s{2,}", row) for row in cli.ok("queue", "list").splitlines()]
    assert dict(zip(header, line, strict=True))["max ready"] == "5"
    assert dict(zip(header, line, strict=True))["when full"] == "reject"
    assert "max ready 5 (warns when full)" in cli.ok("queue", "limit", "q", "--warn")

    # A limit given leaves the others as they are; --clear drops the ones not given.
    assert cli.ok("queue", "limit", "q", "--max-running", "3").strip() == \
        "queue 'q': max running 3, no rate limit, max ready 5 (warns when full)"
    assert cli.ok("queue", "limit", "q", "--rate", "10", "--per", "1", "--reject").strip() == \
        "queue 'q': max running 3, 10 per 1s, max ready 5 (rejects when full)"
    assert cli.ok("queue", "limit", "q", "--clear", "--max-ready", "7").strip() == \
        "queue 'q': no concurrency limit, no rate limit, max ready 7 (warns when full)"
    [q] = [r for r in json.loads(cli.ok("queue", "list", "--json")) if r["name"] == "q"]
    assert (q["max_running"], q["rate_limit"], q["max_ready"]) == (None, None, 7)
    assert "no ready limit" in cli.ok("queue", "limit", "q", "--clear")

    support.assert_one_error_line(cli("queue", "limit", "q", "--reject"),
                                  "--reject needs --max-ready")
    support.assert_one_error_line(cli("queue", "limit", "q"), "give a limit to set")
    # A refused enqueue from the shell is one line too.
    cli.ok("queue", "limit", "q", "--max-ready", "1", "--reject")
    cli.ok("enqueue", "t", "--queue", "q")
    support.assert_one_error_line(cli("enqueue", "t", "--queue", "q"), "queue 'q' is full")
