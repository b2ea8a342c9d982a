"""The claim statements run directly against Postgres.

``claim`` is the one the worker's fetcher runs (through ``worker/claimer.py``,
which adds per-queue limits and weights around it), and ``claim_oldest`` its
every-few-claims anti-starvation variant.

What makes a claim correct: concurrent claimers never get the same job
(``FOR UPDATE SKIP LOCKED``) and never wait on each other; a claim takes the
due jobs of its own queues in (priority, run_at, id) order, at most ``limit``
of them. What keeps it fast: its plan reads the ready index in order and
stops after ``limit`` rows, whatever the size of the backlog.
"""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import psycopg
import pytest
from psycopg import sql as pgsql

from jobqueue import JobQueue, sql
from jobqueue.db import jobs
from jobqueue.db.jobs import per_job
from jobqueue.db.statement import Pipeline
from tests.helpers import count

Row = tuple[Any, ...]

# The statements that take jobs by (priority, run_at, id).
BY_PRIORITY = ["claim"]


def params(worker_id: str, queues: list[str], limit: int, lease: float = 30.0) -> dict[str, Any]:
    """Parameters for any claim statement (each uses the ones it names).

    ``limits`` is what each queue may give (the claimer lowers it for queues
    with a fleet-wide limit); ``ranked`` orders by queue weight first.
    """
    request = jobs.ClaimRequest(worker_id=worker_id, lease=lease, limit=limit, queues=queues,
                                ranked=False, oldest=False)
    return request.params([limit] * len(queues))  # the worker's own builder: scans from the head


def claim(conn: psycopg.Connection[Any], schema: str, worker_id: str, queues: list[str],
          limit: int, lease: float = 30.0, statement: str = "claim") -> list[Row]:
    return conn.execute(sql.query(statement, schema),
                        params(worker_id, queues, limit, lease)).fetchall()


def ids(rows: list[Row]) -> list[int]:
    return [int(r[0]) for r in rows]


@pytest.mark.parametrize("statement", [*BY_PRIORITY, "claim_oldest"])
def test_concurrent_claimers_take_every_job_exactly_once(app: JobQueue, pg_dsn: str,
                                                         admin: psycopg.Connection[Any],
                                                         statement: str) -> None:
    total, claimers = 400, 4
    enqueued = app.enqueue_many([("work", {"n": n}) for n in range(total)], strict=False)
    assert len(enqueued) == total
    start = threading.Barrier(claimers)
    got: dict[str, list[int]] = {}
    failures: list[BaseException] = []

    def claimer(name: str) -> None:
        mine: list[int] = []
        try:
            with psycopg.connect(pg_dsn) as conn:
                # Never wait on another claimer's row locks: with SKIP LOCKED
                # nothing should, and a wait would show up as an error here.
                conn.execute("SET lock_timeout = '5s'")
                conn.commit()
                start.wait(10)
                while True:
                    # Each claim is a transaction that stays open a moment after
                    # locking its rows, so claimers overlap with locks held.
                    batch = ids(claim(conn, app.schema, name, ["default"], limit=7,
                                      statement=statement))
                    conn.execute("SELECT pg_sleep(0.001)")
                    conn.commit()
                    if not batch:
                        break
                    mine.extend(batch)
        except BaseException as exc:  # noqa: BLE001 - reported in the test thread
            failures.append(exc)
        got[name] = mine

    threads = [threading.Thread(target=claimer, args=(f"claimer-{i}",)) for i in range(claimers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not failures, failures
    claimed = [job for batch in got.values() for job in batch]
    assert len(claimed) == total, "a job was claimed twice or not at all"
    assert sorted(claimed) == sorted(enqueued)
    assert sum(1 for batch in got.values() if batch) >= 2, "the claimers did not overlap"
    # The database agrees with what each claimer was told it got.
    rows = admin.execute(pgsql.SQL("SELECT id, locked_by, attempts, state FROM {}").format(
        pgsql.Identifier(app.schema, "jobs"))).fetchall()
    owner = {job: name for name, batch in got.items() for job in batch}
    assert {r[0]: r[1] for r in rows} == owner
    assert {(r[2], r[3]) for r in rows} == {(1, "running")}


@pytest.mark.parametrize("statement", BY_PRIORITY)
def test_claim_skips_rows_locked_by_an_open_claim(app: JobQueue, pg_dsn: str,
                                                  admin: psycopg.Connection[Any],
                                                  statement: str) -> None:
    enqueued = app.enqueue_many([("work", None)] * 6, strict=False)
    with psycopg.connect(pg_dsn) as first, psycopg.connect(pg_dsn) as second:
        second.execute("SET lock_timeout = '3s'")  # a blocked claim fails instead of hanging
        second.commit()
        held = ids(claim(first, app.schema, "first", ["default"], limit=3,
                         statement=statement))  # not committed
        assert sorted(held) == enqueued[:3]
        other = ids(claim(second, app.schema, "second", ["default"], limit=3,
                          statement=statement))
        second.commit()
        assert sorted(other) == enqueued[3:]
        # The first claimer rolls back (a worker that died mid-claim): its jobs
        # are claimable again, with no attempt counted.
        first.rollback()
        again = claim(second, app.schema, "second", ["default"], limit=10, statement=statement)
        second.commit()
        assert sorted(ids(again)) == enqueued[:3]
        assert {r[4] for r in again} == {1}  # attempts, as returned by the claim
    assert count(admin, app.schema, "jobs", "state = 'running' AND locked_by = 'second'") == 6


@pytest.mark.parametrize("statement", BY_PRIORITY)
def test_claim_order_is_priority_then_run_at_then_id(app: JobQueue,
                                                     conn: psycopg.Connection[Any],
                                                     statement: str) -> None:
    rng = random.Random(20240611)
    base = datetime.now(timezone.utc) - timedelta(hours=1)
    # Few distinct values, so that ties on priority and on run_at are common
    # and the id has to break them; two queues, so the claim has to merge them.
    specs = [(rng.choice(["a", "b"]), rng.choice([-5, 0, 0, 3, 10]),
              base - timedelta(minutes=rng.choice([0, 1, 2]))) for _ in range(60)]
    jobs: list[tuple[int, datetime, int]] = []
    for queue, priority, run_at in specs:
        job_id = app.enqueue("work", conn=conn, queue=queue, priority=priority, run_at=run_at,
                             strict=False)
        jobs.append((priority, run_at, job_id))
    conn.commit()
    expected = [job_id for _, _, job_id in sorted(jobs)]

    batches: list[list[int]] = []
    while batch := ids(claim(conn, app.schema, "w", ["a", "b"], limit=7, statement=statement)):
        conn.commit()
        batches.append(batch)
    # Which jobs each claim takes is the contract (the order within one claim
    # is not: they start together).
    assert [sorted(b) for b in batches] == [
        sorted(expected[i:i + 7]) for i in range(0, len(expected), 7)]


@pytest.mark.parametrize("statement", [*BY_PRIORITY, "claim_oldest"])
def test_claim_takes_only_due_jobs_of_its_queues_up_to_limit(
        app: JobQueue, conn: psycopg.Connection[Any], admin: psycopg.Connection[Any],
        statement: str) -> None:
    due_a = app.enqueue_many([("work", None)] * 5, queue="a", strict=False)
    due_b = app.enqueue_many([("work", None)] * 3, queue="b", strict=False)
    later_a = app.enqueue_many([("work", None)] * 2, queue="a", delay=3600, strict=False)
    other = app.enqueue_many([("work", None)] * 2, queue="c", strict=False)

    first = claim(conn, app.schema, "w1", ["a", "b"], limit=6, lease=45, statement=statement)
    conn.commit()
    second = claim(conn, app.schema, "w1", ["a", "b"], limit=6, statement=statement)
    conn.commit()
    third = claim(conn, app.schema, "w1", ["a", "b"], limit=6, statement=statement)
    conn.commit()
    assert (len(first), len(second), third) == (6, 2, [])
    assert sorted(ids(first) + ids(second)) == sorted(due_a + due_b)

    # What a claim does to a row: running, one more attempt, leased to the claimer.
    rows = admin.execute(pgsql.SQL(
        "SELECT state, attempts, locked_by, "
        "extract(epoch FROM locked_until - now()) FROM {} WHERE id = ANY(%s)").format(
        pgsql.Identifier(app.schema, "jobs")), (ids(first),)).fetchall()
    assert {(r[0], r[1], r[2]) for r in rows} == {("running", 1, "w1")}
    assert all(30 < r[3] <= 45 for r in rows), [r[3] for r in rows]
    # Jobs not yet due and jobs of other queues were not touched.
    untouched = later_a + other
    assert count(admin, app.schema, "jobs",
                 "id = ANY(%s) AND state = 'queued' AND attempts = 0 AND locked_by IS NULL",
                 (untouched,)) == len(untouched)


def test_a_queue_named_twice_is_claimed_once(app: JobQueue,
                                            conn: psycopg.Connection[Any]) -> None:
    enqueued = app.enqueue_many([("work", None)] * 5, queue="a", strict=False)
    got = ids(claim(conn, app.schema, "w", ["a", "a"], limit=10))
    conn.commit()
    assert sorted(got) == enqueued


# -- the plan -----------------------------------------------------------------------------


def plan_nodes(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield node
    for child in node.get("Plans", []):
        yield from plan_nodes(child)


def check_plan(plan: dict[str, Any], index: str) -> list[dict[str, Any]]:
    """Fail on any sequential scan of jobs; return the nodes that read ``index``."""
    nodes = list(plan_nodes(plan))
    seq = [n for n in nodes if n["Node Type"] == "Seq Scan" and n.get("Relation Name") == "jobs"]
    assert not seq, plan
    ready = [n for n in nodes if n.get("Index Name") == index]
    assert ready, plan
    return ready


@pytest.fixture
def realistic_jobs(app: JobQueue, admin: psycopg.Connection[Any]) -> str:
    """A jobs table as a busy fleet leaves it: a backlog, running jobs, dead tuples.

    6000 jobs over three unevenly used queues, a tenth scheduled for later,
    mostly priority 0; 2000 of them claimed through the real claim (running),
    and 500 of those acked (deleted, leaving dead tuples behind); then ANALYZE,
    as autovacuum would have done.
    """
    jobs = pgsql.Identifier(app.schema, "jobs")
    admin.execute(pgsql.SQL("""
        INSERT INTO {} (queue, task, priority, run_at)
        SELECT CASE WHEN g % 10 < 6 THEN 'default' WHEN g % 10 < 9 THEN 'emails'
                    ELSE 'reports' END,
               'work',
               CASE WHEN g % 20 = 0 THEN -1 WHEN g % 7 = 0 THEN 5 ELSE 0 END,
               now() - interval '1 hour' + g * interval '100 ms'
                     + CASE WHEN g % 10 = 3 THEN interval '2 hours' ELSE interval '0' END
        FROM generate_series(1, 6000) AS g""").format(jobs))
    running = ids(claim(admin, app.schema, "busy-worker", ["default", "emails", "reports"],
                        limit=2000))
    acked = running[:500]
    admin.execute(sql.query("ack_succeeded", app.schema),
                  {"ids": acked, "per_job": per_job((i, ("1", "0.0", "null", "null"))
                                                    for i in acked),
                   "worker_id": "busy-worker", "awaited_channel": "unused", "channel": "unused"})
    admin.execute(pgsql.SQL("ANALYZE {}").format(jobs))
    return app.schema


QUEUE_SETS = [["default"], ["reports"], ["default", "emails"], ["default", "emails", "reports"]]
# Each statement and the index it must read in order.
INDEXES = {"claim": "jobs_ready_idx", "claim_oldest": "jobs_oldest_idx"}


@pytest.mark.parametrize("statement", list(INDEXES))
@pytest.mark.parametrize("queues", QUEUE_SETS, ids=["+".join(q) for q in QUEUE_SETS])
def test_claim_plan_reads_the_ready_index_and_stops_at_limit(
        realistic_jobs: str, conn: psycopg.Connection[Any], queues: list[str],
        statement: str) -> None:
    schema, limit = realistic_jobs, 10
    # EXPLAIN ANALYZE runs the claim; the transaction is rolled back after.
    row = conn.execute(pgsql.SQL("EXPLAIN (ANALYZE, FORMAT JSON) ")
                       + sql.query(statement, schema), params("w", queues, limit)).fetchone()
    conn.rollback()
    assert row is not None
    plan = row[0][0]["Plan"]
    ready = check_plan(plan, INDEXES[statement])
    # An ordered index scan (not a bitmap scan, which must read and sort every
    # ready row) that stops after `limit` rows per queue: the claim's cost does
    # not grow with the backlog.
    assert {n["Node Type"] for n in ready} == {"Index Scan"}, plan
    for node in ready:
        assert node["Actual Loops"] == len(queues)
        assert node["Actual Rows"] <= limit, plan
    assert plan["Actual Rows"] == limit  # and the claim did claim


# The claim statements end in an UPDATE of jobs: planned without the limit's
# value, a join back to the picked rows would be estimated at a tenth of the
# ready rows and become a hash join over a scan of all of jobs; the update
# must go through the primary key whatever the estimate.
GENERIC = [pytest.param("claim", "jobs_ready_idx"),
           pytest.param("claim_oldest", "jobs_oldest_idx")]


@pytest.mark.parametrize(("statement", "index"), GENERIC)
@pytest.mark.parametrize("queues", QUEUE_SETS, ids=["+".join(q) for q in QUEUE_SETS])
def test_generic_claim_plan_reads_the_index(
        realistic_jobs: str, conn: psycopg.Connection[Any], queues: list[str], statement: str,
        index: str) -> None:
    # A worker runs the claim as a prepared statement (psycopg prepares after
    # five runs) and Postgres may then switch to a generic plan, made without
    # knowing the queues or the limit. Force that plan to check it too.
    schema = realistic_jobs
    text = sql.query(statement, schema).as_string(conn)
    names = ("worker_id", "lease", "queues", "limit", "limits", "ranked", "after_priorities",
             "after_run_ats", "after_ids", "task_names", "task_attempts", "default_attempts")
    for n, name in enumerate(names, start=1):
        text = text.replace(f"%({name})s", f"${n}")
    conn.execute("SET plan_cache_mode = force_generic_plan")
    conn.execute("PREPARE jq_claim(text, float8, text[], bigint, integer[], boolean, "
                 "smallint[], timestamptz[], bigint[], text[], integer[], integer) AS " + text)
    # (EXPLAIN EXECUTE cannot take bound parameters: the values go in as literals.)
    row = conn.execute(pgsql.SQL(
        "EXPLAIN (FORMAT JSON) EXECUTE jq_claim('w', 30, {}::text[], 10, {}::integer[], false, "
        "{}::smallint[], {}::timestamptz[], {}::bigint[], '{{}}', '{{}}', 5)")
        .format(pgsql.Literal(queues), pgsql.Literal([10] * len(queues)),
                pgsql.Literal([0] * len(queues)), pgsql.Literal(["-infinity"] * len(queues)),
                pgsql.Literal([0] * len(queues)))).fetchone()
    conn.rollback()
    assert row is not None
    plan = row[0][0]["Plan"]
    ready = check_plan(plan, index)
    assert {n["Node Type"] for n in ready} == {"Index Scan"}, plan


# -- at a large backlog ------------------------------------------------------------------

LARGE_BACKLOG = 300_000


@pytest.fixture
def large_backlog(app: JobQueue, admin: psycopg.Connection[Any]) -> str:
    """300,000 ready jobs, made by one INSERT ... SELECT, then ANALYZE (seconds, not
    minutes): large enough that the planner's estimate of the claim crosses
    jit_above_cost."""
    jobs = pgsql.Identifier(app.schema, "jobs")
    admin.execute(pgsql.SQL("INSERT INTO {} (queue, task, run_at) SELECT 'default', 'work', "
                            "now() - interval '1 hour' + g * interval '1 ms' "
                            "FROM generate_series(1, %s) AS g").format(jobs), (LARGE_BACKLOG,))
    admin.execute(pgsql.SQL("ANALYZE {}").format(jobs))
    return app.schema


def explain_claim(conn: psycopg.Connection[Any], schema: str) -> dict[str, Any]:
    row = conn.execute(pgsql.SQL("EXPLAIN (FORMAT JSON) ") + sql.query("claim", schema),
                       params("w", ["default"], 100)).fetchone()
    assert row is not None
    return row[0][0]  # type: ignore[no-any-return]


def test_claim_at_a_large_backlog_plans_without_jit_on_the_ready_index(
        large_backlog: str, conn: psycopg.Connection[Any]) -> None:
    schema = large_backlog
    # The worker's connections run worker_session when the pool opens them. A
    # threshold of almost nothing: with JIT on, any plan would be compiled.
    conn.execute(sql.query("worker_session", schema))
    conn.execute("SET jit_above_cost = 10")
    plan = explain_claim(conn, schema)
    assert "JIT" not in plan, plan
    ready = check_plan(plan["Plan"], "jobs_ready_idx")
    assert {n["Node Type"] for n in ready} == {"Index Scan"}, plan
    conn.rollback()
    # The premise, where this server can JIT at all: a session with the default
    # settings would compile the claim on every run at this backlog.
    conn.execute("RESET jit")
    conn.execute("SET jit_above_cost = 10")
    jit_row = conn.execute("SELECT pg_jit_available() AND current_setting('jit')::bool")
    available = jit_row.fetchone()
    if available is not None and available[0]:
        assert "JIT" in explain_claim(conn, schema)
    conn.rollback()


def test_behind_a_transaction_pooler_the_claim_sets_jit_off_for_itself(
        large_backlog: str, pg_dsn: str) -> None:
    # No session settings there: the claim goes in one pipeline after
    # worker_transaction, whose set_config(..., true) lasts for the pipeline's
    # implicit transaction. The same two statements, sent the same way, on a
    # session where JIT would compile any plan:
    schema = large_backlog
    request = jobs.ClaimRequest(worker_id="w", lease=30.0, limit=100, queues=["default"],
                                ranked=False, oldest=False, local_settings=True)
    procedure = jobs.claim(request)
    step = next(procedure)
    assert isinstance(step, Pipeline)
    assert [op.name for op in step.ops] == ["worker_transaction", "claim"]
    with psycopg.connect(pg_dsn, autocommit=True, prepare_threshold=None) as conn:
        conn.execute("SET jit_above_cost = 10")
        with conn.pipeline():
            first, explain = conn.cursor(), conn.cursor()
            first.execute(sql.query("worker_transaction", schema))
            explain.execute(pgsql.SQL("EXPLAIN (FORMAT JSON) ") + sql.query("claim", schema),
                            step.ops[1].params)
        (plan,) = explain.fetchone()  # type: ignore[misc]
        assert "JIT" not in plan[0], plan
        # ... and only for it: the session is as it was, and would compile the claim
        # (where this server can JIT at all).
        assert conn.execute("SHOW jit").fetchone() != ("off",)
        available = conn.execute("SELECT pg_jit_available()").fetchone()
        if available is not None and available[0]:
            row = conn.execute(pgsql.SQL("EXPLAIN (FORMAT JSON) ") + sql.query("claim", schema),
                               step.ops[1].params).fetchone()
            assert row is not None and "JIT" in row[0][0]


# -- where a claim's scan starts -----------------------------------------------------------


def test_jobs_that_land_behind_the_scan_start_are_claimed_soon_and_once(
        app: JobQueue, admin: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch) -> None:
    from jobqueue.db.store import AsyncStore, PoolOptions
    from jobqueue.worker import claimer as claiming
    from jobqueue.worker.claimer import HEAD_EVERY, Claimer

    # This is about where scans start, not their spacing: on a loaded machine a
    # head scan can take over HEAD_COSTLY and space the next ones out (that
    # spacing has its own test), which would make "found within HEAD_EVERY
    # claims" depend on the machine's load.
    monkeypatch.setattr(claiming, "HEAD_COSTLY", 60.0)

    ids = app.enqueue_many([("work", None)] * 60, priority=5, strict=False)

    async def main() -> tuple[int, list[list[int]]]:
        store = AsyncStore(app.settings, probe=False, options=PoolOptions(autocommit=True))
        claimer = Claimer(app.schema, "w", ("default",), 30.0, fair_every=0)
        try:
            batches = [[j.id for j in await claimer.claim(store, 10)]]
            assert claimer.positions  # the next scan starts past these ten
            # An urgent job sorts before that start: a bounded scan cannot see it.
            urgent = await app.enqueue_async("work", priority=0, strict=False)
            for _ in range(20):  # an empty claim is a batch too: it counts as a claim
                batches.append([j.id for j in await claimer.claim(store, 10)])
            return urgent, batches
        finally:
            await store.aclose()
            await app.aclose()

    urgent, batches = asyncio.run(main())
    where = next(i for i, batch in enumerate(batches) if urgent in batch)
    # Found by a scan from the head: the next after a short claim, or every HEAD_EVERY.
    assert 1 <= where <= HEAD_EVERY
    claimed = [job_id for batch in batches for job_id in batch]
    assert sorted(claimed) == sorted([*ids, urgent])  # every job, exactly once
