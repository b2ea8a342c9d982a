"""End to end, counted: 2,000 jobs, two `jobqueue worker` processes, each job done exactly once.

The side-effect table has no unique constraint, so a job that ran twice would
show up as two rows: ``count(*) == count(DISTINCT job_id) == 2000`` is the
exactly-once check (for a run without faults; faults are tested elsewhere).
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

from jobqueue import JobQueue
from tests.acceptance.support import Workers, create_effects, effects
from tests.helpers import count, wait_until

N = 2000


def test_two_worker_processes_run_every_job_exactly_once(
        app: JobQueue, workers: Workers, admin: psycopg.Connection[Any], schema: str) -> None:
    create_effects(admin, schema)
    fleet = [workers.start("--concurrency", "8") for _ in range(2)]
    # Both registered before any job exists, so they compete for the whole run.
    wait_until(lambda: count(admin, schema, "workers") == 2, 30, message="both workers up")

    ids = app.enqueue_many([("record", {"n": n}) for n in range(N)], strict=False)
    assert len(set(ids)) == N

    wait_until(lambda: effects(admin, schema, "done")[0] >= N, 60, interval=0.2,
               message=f"{N} side effects")
    wait_until(lambda: count(admin, schema, "jobs") == 0, 30, message="the last acks")

    for worker in fleet:
        worker.signal()
    for worker in fleet:
        assert worker.wait(60) == 0, worker.log()

    assert effects(admin, schema, "done") == (N, N)
    done = {r[0] for r in admin.execute(sql.SQL("SELECT job_id FROM {}").format(
        sql.Identifier(schema, "effects"))).fetchall()}
    assert done == set(ids)
    assert count(admin, schema, "jobs") == 0
    assert count(admin, schema, "dead_jobs") == 0
    assert count(admin, schema, "workers") == 0
    # Both processes took part (SKIP LOCKED let them claim side by side) ...
    pids = {r[0] for r in admin.execute(sql.SQL("SELECT DISTINCT pid FROM {}").format(
        sql.Identifier(schema, "effects"))).fetchall()}
    assert pids == {w.pid for w in fleet}
    # ... and their own accounts add up to the same total.
    stopped = [w.wait_event("worker.stopped") for w in fleet]
    assert sum(s["succeeded"] for s in stopped) == N
    assert sum(s["claimed"] for s in stopped) == N
