"""`jobqueue worker --burst`: drain every ready job, then exit 0 on its own."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

from jobqueue import JobQueue
from tests.acceptance.support import Workers, create_effects, effects
from tests.helpers import count

N = 60


def test_burst_drains_ready_jobs_and_exits(app: JobQueue, workers: Workers,
                                           admin: psycopg.Connection[Any], schema: str) -> None:
    create_effects(admin, schema)
    ids = app.enqueue_many([("record", {"n": n}) for n in range(N)], strict=False)
    # Not ready for an hour: burst mode must neither wait for it nor touch it.
    later = app.enqueue("record", {"n": -1}, delay=3600, strict=False)

    worker = workers.start("--burst", "--concurrency", "8")
    assert worker.wait(60) == 0, worker.log()

    assert effects(admin, schema, "done") == (N, N)
    done = {r[0] for r in admin.execute(
        sql.SQL("SELECT job_id FROM {}").format(sql.Identifier(schema, "effects"))).fetchall()}
    assert done == set(ids)
    left = admin.execute(sql.SQL("SELECT id, state, attempts FROM {}").format(
        sql.Identifier(schema, "jobs"))).fetchall()
    assert left == [(later, "queued", 0)]
    assert count(admin, schema, "dead_jobs") == 0
    assert count(admin, schema, "workers") == 0
    assert worker.wait_event("worker.stopped")["succeeded"] == N


def test_burst_on_an_empty_queue_exits_at_once(migrated: str, workers: Workers) -> None:
    worker = workers.start("--burst")
    assert worker.wait(60) == 0, worker.log()
    assert worker.wait_event("worker.stopped")["claimed"] == 0
