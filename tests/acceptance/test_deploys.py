"""A rolling deploy: workers of two releases of one app on one queue.

Release N (tests/apps/versions_v1.py) knows ``notify`` at payload version 1,
release N+1 (tests/apps/versions_v2.py) at version 2, with an upgrade from 1.
Jobs of both versions are enqueued while both kinds of worker run. Nothing is
dead-lettered with a TypeError, nothing runs twice, no attempt is spent on a
worker too old for the job, and every job is run by a worker that can run it.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

from jobqueue import JobQueue
from tests.acceptance.support import Cli, Workers
from tests.helpers import count, wait_until

V1, V2 = "tests.apps.versions_v1:app", "tests.apps.versions_v2:app"


def effects(admin: psycopg.Connection[Any], schema: str) -> list[tuple[int, str, str]]:
    return [tuple(r) for r in admin.execute(  # type: ignore[misc]
        sql.SQL("SELECT job_id, task, phase FROM {} ORDER BY job_id").format(
            sql.Identifier(schema, "effects"))).fetchall()]


def test_old_and_new_workers_share_a_queue(producer: JobQueue, workers: Workers, cli: Cli,
                                           admin: psycopg.Connection[Any], schema: str) -> None:
    def enqueue(version: int, n: int, tag: str) -> list[int]:
        if version == 1:
            return producer.enqueue_many([("notify", {"email": f"{tag}{i}@x"})
                                          for i in range(n)], strict=False, queue="deploy")
        return producer.enqueue_many([("notify", {"emails": [f"{tag}{i}@x"], "subject": tag})
                                      for i in range(n)], strict=False, queue="deploy",
                                     version=2)

    old = workers.start("--queues", "deploy", app=V1)
    old.wait_event("worker.started")
    # The deploy begins: new producers enqueue version 2 before any new worker runs.
    v1_jobs, v2_jobs = enqueue(1, 5, "a"), enqueue(2, 5, "b")
    wait_until(lambda: count(admin, schema, "job_history") == 5, 30,
               message="the old worker ran the version-1 jobs")
    wait_until(lambda: old.events("job.newer_version"), 10, message="the old worker to notice")
    rows = admin.execute(sql.SQL("SELECT id, attempts, errors FROM {} ORDER BY id").format(
        sql.Identifier(schema, "jobs"))).fetchall()
    assert rows == [(i, 0, []) for i in v2_jobs]  # handed back: no attempt, no error
    # A new worker joins; the old one is still there, and old producers still enqueue.
    new = workers.start("--queues", "deploy", app=V2)
    late_v1 = enqueue(1, 5, "c")
    wait_until(lambda: count(admin, schema, "job_history") == 15, 60,
               message="every job succeeded")
    assert old.stop() == 0, old.log()
    # The old workers are gone: what version 1 is left is upgraded by the new one.
    last_v1 = enqueue(1, 5, "d")
    wait_until(lambda: count(admin, schema, "job_history") == 20, 60,
               message="the upgraded jobs succeeded")
    assert new.stop() == 0, new.log()

    done = effects(admin, schema)
    assert sorted(job for job, _, _ in done) == sorted(v1_jobs + v2_jobs + late_v1 + last_v1)
    by_job = {job: (task, phase) for job, task, phase in done}
    assert all(by_job[j][0] == "notify@2" for j in v2_jobs)  # never run by release N
    assert [by_job[j] for j in last_v1] == [("notify@2", f"d{i}@x|(none)") for i in range(5)]
    assert all(by_job[j] in {("notify@1", f"c{i}@x"), ("notify@2", f"c{i}@x|(none)")}
               for i, j in enumerate(late_v1))
    attempts = dict(admin.execute(sql.SQL("SELECT id, attempts FROM {}").format(
        sql.Identifier(schema, "job_history"))).fetchall())
    assert set(attempts.values()) == {1}  # no attempt was spent on a worker too old
    assert count(admin, schema, "dead_jobs") == 0
    assert len(old.events("job.newer_version")) == 1  # logged once, not per job

    # History keeps the version each job was enqueued for; job show says it.
    kept = dict(admin.execute(sql.SQL("SELECT id, version FROM {}").format(
        sql.Identifier(schema, "job_history"))).fetchall())
    assert {j: kept[j] for j in v2_jobs} == dict.fromkeys(v2_jobs, 2)
    assert {kept[j] for j in v1_jobs + late_v1 + last_v1} == {1}
    assert "version:    2 (of the task's payload)" in cli.ok("job", "show", str(v2_jobs[0]))
    assert "version:" not in cli.ok("job", "show", str(v1_jobs[0]))
