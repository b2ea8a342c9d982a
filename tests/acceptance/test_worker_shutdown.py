"""SIGTERM to a `jobqueue worker` process: in-flight jobs finish, or go back to the queue.

Twenty jobs run at once (concurrency 20). Each records ``started``, waits on a
gate file, sleeps, and records ``finished``. The gate lets the test send
SIGTERM while all twenty are provably still running, with no timing guesswork.
Async handlers, sync ones (thread pool) and sync ones with a timeout (run in
a killable child process) are covered.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from jobqueue import JobQueue
from tests.acceptance.support import Workers, effects
from tests.helpers import count, wait_until

N = 20
# async on the loop; sync in the thread pool; sync with a timeout, in a forked child
TASKS = ["slow", "slow_sync", "slow_forked"]


def enqueue_gated(producer: JobQueue, task: str, gate: Path, seconds: float) -> list[int]:
    # The producer does not import the worker's code: strict=False, as in real life.
    return producer.enqueue_many([(task, {"seconds": seconds, "gate": str(gate)})] * N,
                                 strict=False)


def jobs(admin: psycopg.Connection[Any], schema: str) -> list[tuple[int, str, int, Any]]:
    return [tuple(r) for r in admin.execute(  # type: ignore[misc]
        sql.SQL("SELECT id, state, attempts, locked_by FROM {} ORDER BY id")
        .format(sql.Identifier(schema, "jobs"))).fetchall()]


@pytest.mark.parametrize("task", TASKS)
def test_sigterm_lets_running_jobs_finish(task: str, producer: JobQueue, workers: Workers,
                                          admin: psycopg.Connection[Any], schema: str,
                                          tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    ids = enqueue_gated(producer, task, gate, seconds=2)
    worker = workers.start("--concurrency", str(N), "--shutdown-timeout", "30")
    wait_until(lambda: effects(admin, schema, "started") == (N, N), 30,
               message=f"all {N} jobs started")

    worker.signal()
    stopping = worker.wait_event("worker.stopping")
    assert stopping["in_flight"] == N, worker.log()
    assert effects(admin, schema, "finished") == (0, 0)
    gate.touch()  # only now may the jobs go on: each still has 2 s of work ahead

    assert worker.wait(60) == 0, worker.log()
    assert effects(admin, schema, "finished") == (N, N)
    finished = {r[0] for r in admin.execute(
        sql.SQL("SELECT job_id FROM {} WHERE phase = 'finished'")
        .format(sql.Identifier(schema, "effects"))).fetchall()}
    assert finished == set(ids)
    assert count(admin, schema, "jobs") == 0
    assert count(admin, schema, "dead_jobs") == 0
    assert count(admin, schema, "workers") == 0
    stopped = worker.wait_event("worker.stopped")
    assert stopped["released"] == 0, worker.log()


@pytest.mark.parametrize("task", TASKS)
def test_grace_expiry_puts_unfinished_jobs_back(task: str, producer: JobQueue, workers: Workers,
                                                admin: psycopg.Connection[Any], schema: str,
                                                tmp_path: Path) -> None:
    gate = tmp_path / "gate"  # not opened while the first worker runs: no job can finish
    ids = enqueue_gated(producer, task, gate, seconds=0)
    worker = workers.start("--concurrency", str(N), "--shutdown-timeout", "1")
    wait_until(lambda: effects(admin, schema, "started") == (N, N), 30,
               message=f"all {N} jobs started")
    assert {r[1] for r in jobs(admin, schema)} == {"running"}

    worker.signal()
    # Well before a gated job would give up (GATE_LIMIT): the worker must not wait for them.
    assert worker.wait(30) == 0, worker.log()
    assert effects(admin, schema, "finished") == (0, 0)
    # Back in the queue, unlocked, and the interrupted attempt not counted.
    assert jobs(admin, schema) == [(i, "queued", 0, None) for i in ids]
    assert count(admin, schema, "dead_jobs") == 0
    assert count(admin, schema, "workers") == 0
    assert worker.wait_event("worker.grace_expired")["unfinished"] == N
    assert worker.wait_event("worker.stopped")["released"] == N

    # Nothing was lost: the next worker runs every one of them, as attempt 1.
    gate.touch()
    again = workers.start("--burst", "--concurrency", str(N))
    assert again.wait(60) == 0, again.log()
    assert effects(admin, schema, "finished") == (N, N)
    attempts = admin.execute(
        sql.SQL("SELECT DISTINCT attempt FROM {} WHERE phase = 'finished'")
        .format(sql.Identifier(schema, "effects"))).fetchall()
    assert attempts == [(1,)]
    assert count(admin, schema, "jobs") == 0
    assert count(admin, schema, "dead_jobs") == 0


def test_ctrl_c_to_the_whole_process_group_is_still_one_graceful_stop(
        producer: JobQueue, workers: Workers, admin: psycopg.Connection[Any], schema: str,
        tmp_path: Path) -> None:
    """A terminal's Ctrl-C signals every process of its foreground group: the worker
    and its forked handler children. A child must neither die of it nor pass it on
    (it inherited the worker's signal wake-up pipe): one more SIGINT reaching the
    worker would be the second, "exit now"."""
    gate = tmp_path / "gate"
    ids = enqueue_gated(producer, "slow_forked", gate, seconds=0.5)
    worker = workers.start("--concurrency", str(N), "--shutdown-timeout", "30")
    wait_until(lambda: effects(admin, schema, "started") == (N, N), 30,
               message=f"all {N} jobs started")
    children = {r[0] for r in admin.execute(
        sql.SQL("SELECT pid FROM {} WHERE phase = 'started'")
        .format(sql.Identifier(schema, "effects"))).fetchall()}
    assert len(children) == N and worker.pid not in children

    worker.signal(signal.SIGINT)
    for pid in children:
        os.kill(pid, signal.SIGINT)
    worker.wait_event("worker.stopping")
    gate.touch()
    assert worker.wait(60) == 0, worker.log()
    assert [e["action"] for e in worker.events("worker.signal")] == ["graceful shutdown"]
    finished = {r[0] for r in admin.execute(
        sql.SQL("SELECT job_id FROM {} WHERE phase = 'finished'")
        .format(sql.Identifier(schema, "effects"))).fetchall()}
    assert finished == set(ids)
    assert count(admin, schema, "jobs") == 0 and count(admin, schema, "dead_jobs") == 0


def test_log_is_json_lines(producer: JobQueue, workers: Workers) -> None:
    """What a log shipper sees on the worker's stderr: one JSON object per line."""
    producer.enqueue("record", {"n": 1}, strict=False)
    worker = workers.start("--burst")
    assert worker.wait(60) == 0, worker.log()
    lines = [line for line in worker.log().splitlines() if line.strip()]
    assert lines, "the worker logged nothing"
    records = [json.loads(line) for line in lines]
    assert records[0]["event"] == "worker.starting"
    assert records[-1]["event"] == "worker.stopped"
    assert all({"event", "level", "timestamp"} <= set(r) for r in records)
