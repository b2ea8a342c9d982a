"""Workflows against real Postgres: chain, group, chord, failure rules, replay, rollback.

Each test enqueues a canvas, runs a real worker in-process until the queue is
idle, and reads every node back through ``app.workflow`` and the tables.
"""

from __future__ import annotations

import threading
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import sql

import jobqueue
from jobqueue import JobContext, JobQueue, chain, chord, group
from jobqueue.dead import DeadFilter
from jobqueue.workflow import Canvas, compile_canvas
from tests.helpers import count


def drain(app: JobQueue) -> None:
    app.run_worker(burst=True, handle_signals=False, concurrency=4)


def test_a_chord_receives_its_members_results_in_order(app: JobQueue) -> None:
    @app.task
    def square(n: int) -> int:
        return n * n

    @app.task(pass_context=True)
    def total(ctx: JobContext) -> dict[str, Any]:
        return {"sum": sum(ctx.parent_results), "parts": ctx.parent_results}

    @app.task(pass_context=True)
    def notify(ctx: JobContext, user: int) -> list[Any]:
        return [user, *ctx.parent_results]

    flow = chain(chord(group(app.sig(square, {"n": n}) for n in range(8)), app.sig(total)),
                 app.sig(notify, {"user": 1}))
    handle = app.enqueue_workflow(flow)
    assert len(handle.ids) == 10
    info = app.workflow(handle.id)
    assert info.state == "running"
    assert [n.state for n in info.nodes] == ["queued"] * 8 + ["waiting"] * 2
    assert app.job(handle.ids[-1]).state == "waiting"
    drain(app)
    info = app.workflow(handle.id)
    assert info.state == "succeeded"
    squares = [n * n for n in range(8)]
    total_node, notify_node = info.nodes[8], info.nodes[9]
    assert total_node.result == {"sum": sum(squares), "parts": squares}
    assert total_node.depends_on == handle.ids[:8]
    assert notify_node.result == [1, {"sum": sum(squares), "parts": squares}]
    assert app.result(handle.ids[-1], timeout=1) == notify_node.result


def test_waiting_nodes_are_not_claimable(app: JobQueue, admin: psycopg.Connection[Any]) -> None:
    app.enqueue_workflow(chain(app.sig("a", strict=False), app.sig("b", strict=False),
                               app.sig("c", strict=False)))
    jobs = sql.Identifier(app.schema, "jobs")
    states = dict(admin.execute(sql.SQL("SELECT task, state FROM {}").format(jobs)).fetchall())
    assert states == {"a": "queued", "b": "waiting", "c": "waiting"}
    # Outside the claim's partial index: it holds the one queued job only.
    used = admin.execute(sql.SQL("SELECT count(*) FROM {} WHERE state = 'queued'").format(
        jobs)).fetchone()
    assert used is not None and used[0] == 1


def test_a_failed_middle_kills_what_follows_and_a_replay_resumes_it(app: JobQueue) -> None:
    fixed = threading.Event()
    ran: list[str] = []

    @app.task(pass_context=True)
    def download(ctx: JobContext, url: str) -> str:
        ran.append("download")
        return f"<html of {url}>"

    @app.task(pass_context=True, max_attempts=1)
    def parse(ctx: JobContext) -> int:
        ran.append("parse")
        if not fixed.is_set():
            raise jobqueue.PermanentError("parser bug")
        return len(ctx.parent_results[0])

    @app.task(pass_context=True)
    def store(ctx: JobContext) -> str:
        ran.append("store")
        return f"stored {ctx.parent_results[0]}"

    @app.task(pass_context=True)
    def report(ctx: JobContext) -> str:
        ran.append("report")
        return f"reported {ctx.parent_results[0]}"

    handle = app.enqueue_workflow(chain(app.sig(download, {"url": "u"}), app.sig(parse),
                                        app.sig(store), app.sig(report)))
    drain(app)
    info = app.workflow(handle.id)
    assert info.state == "failed"
    assert [(n.task, n.state, n.reason) for n in info.nodes] == [
        ("download", "succeeded", None), ("parse", "dead", "permanent"),
        ("store", "dead", "dependency_failed"), ("report", "dead", "dependency_failed")]
    assert ran == ["download", "parse"]  # nothing after the failure ran
    parse_id = handle.ids[1]
    assert f"job {parse_id}, which it depends on, is dead" in (info.nodes[2].error or "")
    dead = {d.id: d.reason for d in app.dead.list()}
    assert dead == {parse_id: "permanent", handle.ids[2]: "dependency_failed",
                    handle.ids[3]: "dependency_failed"}
    # The dry run says what the replay would bring back.
    assert list(app.dead.would_revive([parse_id])) == handle.ids[2:]

    fixed.set()
    # Every dead job: the nodes that died of a dependency are not replayed as jobs of
    # their own (they would run without their inputs) but revived through their cause.
    replay = app.dead.replay(DeadFilter(all=True))
    assert list(replay.replayed) == [parse_id] and replay.skipped == 2
    assert replay.revived == handle.ids[2:]  # the same ids, waiting again
    drain(app)
    info = app.workflow(handle.id)
    assert info.state == "succeeded", [(n.task, n.state) for n in info.nodes]
    by_task = {n.task: n for n in info.nodes}  # the replayed parse is a new job (new id)
    assert by_task["report"].result == f"reported stored {len('<html of u>')}"
    assert by_task["store"].depends_on == [replay.replayed[parse_id]]
    assert ran == ["download", "parse", "parse", "store", "report"]


def test_siblings_carry_on_when_one_branch_dies(app: JobQueue) -> None:
    @app.task(max_attempts=1)
    def maybe(n: int) -> int:
        if n == 2:
            raise ValueError("two")
        return n

    @app.task(pass_context=True)
    def after(ctx: JobContext) -> list[Any]:
        return ctx.parent_results

    branches = group(chain(app.sig(maybe, {"n": n}), app.sig(after)) for n in range(4))
    handle = app.enqueue_workflow(chord(branches, app.sig(after)))
    drain(app)
    nodes = app.workflow(handle.id).nodes
    states = [(n.task, n.state) for n in nodes]
    assert states == [("maybe", "succeeded"), ("after", "succeeded"),
                      ("maybe", "succeeded"), ("after", "succeeded"),
                      ("maybe", "dead"), ("after", "dead"),
                      ("maybe", "succeeded"), ("after", "succeeded"),
                      ("after", "dead")]  # the chord's callback waited on the dead branch
    assert nodes[1].result == [0] and nodes[7].result == [3]


def test_cancelling_a_waiting_node_kills_its_dependents(app: JobQueue) -> None:
    @app.task
    def step() -> None:
        return None

    handle = app.enqueue_workflow(chain(app.sig(step), app.sig(step), app.sig(step)))
    assert app.cancel(handle.ids[1]) == "cancelled"
    drain(app)
    assert [(n.state, n.reason) for n in app.workflow(handle.id).nodes] == [
        ("succeeded", None), ("cancelled", "cancelled"), ("dead", "dependency_failed")]


def test_a_workflow_enqueued_in_a_rolled_back_transaction_never_existed(
        app: JobQueue, pg_dsn: str, admin: psycopg.Connection[Any]) -> None:
    with psycopg.connect(pg_dsn) as conn:
        handle = app.enqueue_workflow(chord([app.sig("x", strict=False)] * 3,
                                            app.sig("y", strict=False)), conn=conn)
        assert len(handle.ids) == 4
        conn.rollback()
    for table in ("jobs", "job_deps", "workflows"):
        assert count(admin, app.schema, table) == 0, table
    with pytest.raises(jobqueue.WorkflowNotFound):
        app.workflow(handle.id)


async def _enqueue_async(app: JobQueue, pg_dsn: str) -> list[int]:
    async with await psycopg.AsyncConnection.connect(pg_dsn) as conn:
        handle = await app.enqueue_workflow_async(
            chain(app.sig("x", strict=False), app.sig("y", strict=False)), conn=conn)
        await conn.commit()
    await app.aclose()
    return handle.ids


def test_enqueue_workflow_async_in_the_callers_transaction(
        app: JobQueue, pg_dsn: str, admin: psycopg.Connection[Any]) -> None:
    import asyncio

    ids = asyncio.run(_enqueue_async(app, pg_dsn))
    assert count(admin, app.schema, "jobs") == 2 and len(ids) == 2
    assert count(admin, app.schema, "job_deps") == 1


def test_bad_signatures_are_refused_before_any_sql(app: JobQueue) -> None:
    with pytest.raises(jobqueue.UnknownTaskError):
        app.sig("nobody")
    with pytest.raises(jobqueue.PayloadError, match="not JSON-serializable"):
        app.sig("x", {"when": object()}, strict=False)
    with pytest.raises(jobqueue.PayloadError, match="signatures"):
        chain(app.sig("x", strict=False), "not a signature")  # type: ignore[arg-type]
    with pytest.raises(jobqueue.PayloadError, match="empty workflow"):
        app.enqueue_workflow(group())


# -- a property: random DAGs, random failures and cancels ------------------------------------


@st.composite
def canvases(draw: Any, depth: int = 0) -> Any:
    """A random canvas shape: ("sig", fate), ("chain" | "group", parts) or
    ("chord", members, callback); fates: ok, fail (permanently) or cancel."""
    kinds = ["sig", "sig", "chain", "group", "chord"] if depth < 3 else ["sig"]
    kind = draw(st.sampled_from(kinds))
    if kind == "sig":
        return ("sig", draw(st.sampled_from(["ok", "ok", "ok", "fail", "cancel"])))
    parts = [draw(canvases(depth + 1)) for _ in range(draw(st.integers(1, 3)))]
    if kind == "chord":
        return (kind, parts, draw(canvases(depth + 1)))
    return (kind, parts)


class Runs:
    """What the property test's handler saw, reset for each example."""

    def __init__(self) -> None:
        self.ran: list[int] = []
        self.finished: set[int] = set()
        self.violations: list[str] = []


RUNS = Runs()


def node(ctx: JobContext, fate: str, deps: list[int]) -> int:
    """A node that checks it runs after its dependencies succeeded, then meets its fate."""
    runs = RUNS
    missing = [d for d in deps if d not in runs.finished]
    if missing:
        runs.violations.append(f"{ctx.id} ran before {missing} succeeded")
    runs.ran.append(ctx.id)
    if fate == "fail":
        raise jobqueue.PermanentError("fate")
    runs.finished.add(ctx.id)  # before the ack: a dependent is claimed only after it
    return ctx.id


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(shape=canvases())
def test_random_workflows_never_hang_and_respect_their_dependencies(
        app: JobQueue, admin: psycopg.Connection[Any], shape: Any) -> None:
    global RUNS
    RUNS = Runs()
    if "node" not in app.tasks:
        app.task(name="node", pass_context=True, max_attempts=1)(node)
    fates: list[str] = []

    def build(s: Any) -> Canvas:
        if s[0] == "sig":
            fates.append(s[1])
            return app.sig("node", {"fate": s[1], "deps": []})
        if s[0] == "chain":
            return chain(*[build(p) for p in s[1]])
        if s[0] == "group":
            return group(*[build(p) for p in s[1]])
        return chord(group(*[build(p) for p in s[1]]), build(s[2]))

    canvas = build(shape)
    plan = compile_canvas(canvas)
    handle = app.enqueue_workflow(canvas)
    ids = handle.ids
    # Each node is told its dependencies' ids, so that it can check them itself.
    jobs = sql.Identifier(app.schema, "jobs")
    for number in range(1, len(plan.nodes) + 1):
        deps = [ids[d - 1] for n, d, _ in plan.edges if n == number]
        admin.execute(sql.SQL("UPDATE {} SET args = jsonb_set(args, '{{deps}}', %s) "
                              "WHERE id = %s").format(jobs),
                      (psycopg.types.json.Jsonb(deps), ids[number - 1]))
    for job_id, fate in zip(ids, fates, strict=True):
        if fate == "cancel":
            app.cancel(job_id)
    drain(app)

    info = app.workflow(handle.id)
    assert not RUNS.violations, RUNS.violations
    # Idle means settled: nothing waiting, queued or running is left of it.
    assert {n.state for n in info.nodes} <= {"succeeded", "dead", "cancelled"}, info.as_dict()
    assert count(admin, app.schema, "jobs", "workflow_id = %s", (handle.id,)) == 0
    by_id = {n.id: n for n in info.nodes}
    for n in info.nodes:
        if n.state == "succeeded":
            assert n.id in RUNS.ran
            assert all(by_id[d].state == "succeeded" for d in n.depends_on), n
        if n.reason == "dependency_failed":
            assert n.id not in RUNS.ran
            assert any(by_id[d].state in ("dead", "cancelled") for d in n.depends_on), n


def test_the_last_two_members_acked_at_the_same_instant_release_the_callback_once(
        app: JobQueue, pg_dsn: str, admin: psycopg.Connection[Any]) -> None:
    """Two workers ack a chord's last two members in overlapping transactions: the
    second ack waits for the first's lock on the callback's row, re-reads it, and
    the callback is released exactly once (not never, not with a count gone wrong)."""
    from jobqueue.db import jobs as job_ops
    from jobqueue.db.jobs import ClaimRequest
    from jobqueue.outcome import Outcome

    handle = app.enqueue_workflow(chord([app.sig("m", strict=False)] * 2,
                                        app.sig("cb", strict=False)))
    a, b = psycopg.connect(pg_dsn), psycopg.connect(pg_dsn)
    try:
        claimed = {}
        for worker, conn in (("wa", a), ("wb", b)):
            req = ClaimRequest(worker_id=worker, lease=30.0, limit=1, queues=["default"],
                               ranked=False, oldest=False)
            [job] = app.store.run(job_ops.claim(req), conn)
            conn.commit()
            claimed[worker] = job
        assert {j.id for j in claimed.values()} == set(handle.ids[:2])
        acks = {w: job_ops.succeed([Outcome.succeeded(j, 0.0, "1", 3600.0)], w, app.schema)
                for w, j in claimed.items()}
        assert len(app.store.run(acks["wa"], a)) == 1  # A's ack holds the callback's row
        second = threading.Thread(target=lambda: (app.store.run(acks["wb"], b), b.commit()))
        second.start()
        second.join(0.5)
        assert second.is_alive()  # B waits for A's lock on the callback
        a.commit()
        second.join(10)
        assert not second.is_alive()
    finally:
        a.close()
        b.close()
    row = admin.execute(sql.SQL("SELECT state, waiting FROM {} WHERE id = %s").format(
        sql.Identifier(app.schema, "jobs")), (handle.ids[2],)).fetchone()
    assert row == ("queued", 0)
    assert app.workflow(handle.id).nodes[2].state == "queued"


def test_nodes_are_ordinary_jobs_with_retries_locks_and_priorities(
        app: JobQueue, admin: psycopg.Connection[Any]) -> None:
    tries: dict[int, int] = {}

    @app.task(pass_context=True, max_attempts=3,
              retry=jobqueue.Retry(base=0.01, cap=0.02, jitter=False))
    def flaky(ctx: JobContext, n: int) -> int:
        tries[n] = ctx.attempt
        if ctx.attempt < 2:
            raise ConnectionError("once")
        return n

    @app.task(pass_context=True)
    def total(ctx: JobContext) -> int:
        return sum(ctx.parent_results)

    handle = app.enqueue_workflow(chord(
        group(app.sig(flaky, {"n": n}, lock="one-at-a-time", priority=-1) for n in range(3)),
        app.sig(total, queue="default")))
    rows = admin.execute(sql.SQL("SELECT lock_key, priority FROM {} WHERE id = ANY(%s)").format(
        sql.Identifier(app.schema, "jobs")), (handle.ids[:3],)).fetchall()
    assert rows == [("one-at-a-time", -1)] * 3
    drain(app)
    assert tries == {0: 2, 1: 2, 2: 2}
    assert app.workflow(handle.id).nodes[-1].result == 3
    assert app.job(handle.ids[0]).attempts == 2 and len(app.job(handle.ids[0]).errors) == 1


def test_a_large_chord_goes_by_copy_in_the_callers_transaction(
        app: JobQueue, pg_dsn: str, admin: psycopg.Connection[Any]) -> None:
    @app.task
    def part(n: int) -> int:
        return n

    @app.task(pass_context=True)
    def total(ctx: JobContext) -> list[int]:
        return [len(ctx.parent_results), sum(ctx.parent_results)]

    members = 1500  # past the COPY threshold
    flow = chord(group(app.sig(part, {"n": n}, lock="k" if n == 0 else None)
                       for n in range(members)), app.sig(total))
    with psycopg.connect(pg_dsn) as conn:
        app.enqueue_workflow(flow, conn=conn)
        conn.rollback()
    assert count(admin, app.schema, "jobs") == 0 and count(admin, app.schema, "job_deps") == 0
    handle = app.enqueue_workflow(flow)
    assert count(admin, app.schema, "job_deps") == members
    assert count(admin, app.schema, "jobs", "lock_key = 'k'") == 1
    app.run_worker(burst=True, handle_signals=False, concurrency=50)
    assert app.result(handle.ids[-1], timeout=1) == [members, sum(range(members))]


def test_a_node_of_a_task_without_history_still_hands_its_result_on(app: JobQueue) -> None:
    @app.task(history=False)
    def unkept(n: int) -> int:
        return n + 1

    @app.task(pass_context=True)
    def after(ctx: JobContext) -> list[Any]:
        return ctx.parent_results

    handle = app.enqueue_workflow(chain(app.sig(unkept, {"n": 41}), app.sig(after)))
    drain(app)
    assert app.result(handle.ids[-1], timeout=1) == [42]
    with pytest.raises(jobqueue.JobNotFound):
        app.job(handle.ids[0])  # no history of it, as its task says
