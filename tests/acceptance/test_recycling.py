"""Recycling with real processes: children and workers that leak are replaced, nothing lost.

Handlers of tests/apps/process_app.py leak on purpose (each job keeps ``mb``
megabytes, touched, so it is resident). Every test counts jobs in and out:
each job succeeds once, on its first attempt, and ran exactly once.
"""

from __future__ import annotations

import signal
from collections import Counter
from typing import Any

import psycopg
from psycopg import sql

from jobqueue import JobQueue
from jobqueue.protocol import RECYCLE_EXIT_CODE
from tests.acceptance.support import Workers, metrics_args
from tests.acceptance.test_processes import children, replacements
from tests.helpers import count, wait_until

APP = "tests.apps.process_app:app"


def pids_by_job(admin: psycopg.Connection[Any], schema: str, task: str) -> dict[int, int]:
    rows = admin.execute(sql.SQL("SELECT job_id, pid FROM {} WHERE task = %s").format(
        sql.Identifier(schema, "effects")), (task,)).fetchall()
    assert len(rows) == len({r[0] for r in rows}), "a job ran twice"
    return dict(rows)


def all_succeeded_once(admin: psycopg.Connection[Any], schema: str, ids: list[int]) -> None:
    attempts = dict(admin.execute(sql.SQL("SELECT id, attempts FROM {}").format(
        sql.Identifier(schema, "job_history"))).fetchall())
    assert attempts == {i: 1 for i in ids}
    assert count(admin, schema, "jobs") == 0
    assert count(admin, schema, "dead_jobs") == 0


def test_max_jobs_per_child(producer: JobQueue, workers: Workers,
                            admin: psycopg.Connection[Any], schema: str) -> None:
    ids = producer.enqueue_many([("leak_in_child", {"mb": 1})] * 12, strict=False,
                                queue="leaky")
    port, metrics = metrics_args()
    worker = workers.start("--queues", "leaky", "--processes", "2",
                           "--max-jobs-per-child", "3", *metrics, app=APP)
    wait_until(lambda: count(admin, schema, "job_history") == 12, 60, message="all jobs done")
    all_succeeded_once(admin, schema, ids)
    per_child = Counter(pids_by_job(admin, schema, "leak_in_child").values())
    assert max(per_child.values()) <= 3 and len(per_child) >= 4, per_child
    # Each child that reached 3 jobs left after its third and said so.
    full = sum(1 for n in per_child.values() if n == 3)
    wait_until(lambda: len(worker.events("process.recycled")) == full, 10,
               message=f"{full} recycled children")
    assert worker.pid not in per_child
    assert len(children(worker.pid)) == 2
    assert replacements(port) == {"crashed": 0, "killed": 0, "recycled": full}
    assert worker.stop() == 0, worker.log()


def test_max_memory_replaces_a_leaking_child(producer: JobQueue, workers: Workers,
                                             admin: psycopg.Connection[Any],
                                             schema: str) -> None:
    ids = producer.enqueue_many([("leak_in_child", {"mb": 40})] * 10, strict=False,
                                queue="leaky")
    worker = workers.start("--queues", "leaky", "--processes", "1", "--max-memory", "150",
                           app=APP)
    wait_until(lambda: count(admin, schema, "job_history") == 10, 60, message="all jobs done")
    all_succeeded_once(admin, schema, ids)
    recycled = worker.events("process.recycled")
    assert recycled and all(r["rss_mb"] > 150 for r in recycled), recycled
    # Each child ran until it held more than 150 MB, then made way: never far past it.
    per_child = Counter(pids_by_job(admin, schema, "leak_in_child").values())
    assert len(per_child) >= 3 and max(per_child.values()) <= 4, per_child
    assert worker.stop() == 0, worker.log()


def test_supervise_restarts_a_worker_over_its_memory(producer: JobQueue, workers: Workers,
                                                     admin: psycopg.Connection[Any],
                                                     schema: str) -> None:
    ids = producer.enqueue_many([("leak_in_worker", {"mb": 25, "seconds": 0.2})] * 24,
                                strict=False, queue="leaky_worker")
    supervisor = workers.start("--queues", "leaky_worker", "--concurrency", "2",
                               "--max-memory", "160", "--supervise", app=APP)
    wait_until(lambda: count(admin, schema, "job_history") == 24, 120,
               message="all jobs done")
    all_succeeded_once(admin, schema, ids)
    ran_in = set(pids_by_job(admin, schema, "leak_in_worker").values())
    assert len(ran_in) >= 2, ran_in  # more than one worker process did the work
    assert supervisor.pid not in ran_in  # the supervisor runs no jobs

    def settled() -> bool:
        # The last recycle may still be under way: its worker stopping, the next starting.
        recycles = len(supervisor.events("worker.recycle"))
        return (len(supervisor.events("supervisor.recycled")) == recycles
                and len(supervisor.events("supervisor.started")) == recycles + 1
                == len(supervisor.events("worker.started")))

    wait_until(settled, 30, message="the supervisor to settle")
    recycles = supervisor.events("worker.recycle")
    assert recycles and all("over --max-memory 160 MB" in r["reason"] for r in recycles)
    # A recycled worker deregistered: only the running one is in the fleet.
    assert count(admin, schema, "workers") == 1
    supervisor.signal(signal.SIGTERM)
    assert supervisor.wait(60) == 0, supervisor.log()
    assert count(admin, schema, "workers") == 0
    assert not children(supervisor.pid)


def test_supervise_restarts_a_killed_worker(producer: JobQueue, workers: Workers,
                                            admin: psycopg.Connection[Any],
                                            schema: str) -> None:
    supervisor = workers.start("--queues", "leaky_worker", "--supervise", app=APP)
    first = supervisor.wait_event("supervisor.started")["pid"]
    supervisor.wait_event("worker.started")
    import os
    os.kill(first, signal.SIGKILL)
    wait_until(lambda: len(supervisor.events("supervisor.started")) == 2, 30,
               message="a new worker")
    assert supervisor.events("supervisor.worker_killed")[0]["signal"] == "SIGKILL"
    ids = producer.enqueue_many([("leak_in_worker", {"mb": 1})] * 3, strict=False,
                                queue="leaky_worker")
    wait_until(lambda: count(admin, schema, "job_history") == 3, 60, message="jobs done")
    all_succeeded_once(admin, schema, ids)
    assert supervisor.stop() == 0, supervisor.log()


def test_a_recycled_worker_exits_with_the_recycle_code(
        producer: JobQueue, workers: Workers, admin: psycopg.Connection[Any], schema: str) -> None:
    ids = producer.enqueue_many([("leak_in_worker", {"mb": 1, "seconds": 0.05})] * 6,
                                strict=False, queue="leaky_worker")
    # Supervised (as the supervisor runs it) but alone: it leaves after 3 jobs started.
    worker = workers.start("--queues", "leaky_worker", "--concurrency", "1", "--prefetch", "0",
                           "--max-jobs-per-child", "3", app=APP,
                           env={"JOBQUEUE_SUPERVISED": "1"})
    assert worker.wait(60) == RECYCLE_EXIT_CODE, worker.log()
    done = pids_by_job(admin, schema, "leak_in_worker")
    assert 3 <= len(done) < 6
    # What it did not run is still queued, its attempt not counted.
    rows = admin.execute(sql.SQL("SELECT id, state, attempts FROM {} ORDER BY id").format(
        sql.Identifier(schema, "jobs"))).fetchall()
    assert rows == [(i, "queued", 0) for i in ids if i not in done]
