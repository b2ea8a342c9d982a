"""The worker's task declaration governs what a producer left unset.

A producer that enqueues by name (``strict=False``) does not import the task:
its own defaults must not decide how often the worker's task is tried.
"""

from __future__ import annotations

from typing import Any

import psycopg

from jobqueue import JobQueue, Retry
from tests.helpers import count, wait_until, worker_thread


def producer_and_worker(pg_dsn: str, schema: str) -> tuple[JobQueue, JobQueue, list[int]]:
    """A producer with no tasks at all, and a worker app that declares ``flaky``
    (always fails, retried at once) with max_attempts=3 and ``plain`` with none."""
    producer = JobQueue(pg_dsn, schema=schema, default_max_attempts=9)
    worker_app = JobQueue(pg_dsn, schema=schema)
    attempts: list[int] = []

    @worker_app.task(max_attempts=3, retry=Retry(base=0, jitter=False), pass_context=True)
    def flaky(ctx: Any) -> None:
        attempts.append(ctx.attempt)
        raise RuntimeError("always")

    @worker_app.task(retry=Retry(base=0, jitter=False))
    def plain() -> None:
        raise RuntimeError("always")

    return producer, worker_app, attempts


def dead_attempts(admin: psycopg.Connection[Any], schema: str) -> dict[int, tuple[int, int]]:
    rows = admin.execute(psycopg.sql.SQL("SELECT id, attempts, max_attempts FROM {}").format(
        psycopg.sql.Identifier(schema, "dead_jobs"))).fetchall()
    return {r[0]: (r[1], r[2]) for r in rows}


def test_a_by_name_job_gets_the_workers_max_attempts(
        pg_dsn: str, migrated: str, admin: psycopg.Connection[Any]) -> None:
    producer, worker_app, attempts = producer_and_worker(pg_dsn, migrated)
    try:
        one = producer.enqueue("flaky", strict=False)
        # A row left unset says so: nothing of the producer's defaults (9) is in it.
        assert admin.execute(psycopg.sql.SQL("SELECT max_attempts FROM {} WHERE id = %s").format(
            psycopg.sql.Identifier(migrated, "jobs")), (one,)).fetchone() == (None,)
        many = producer.enqueue_many([("flaky", {}), ("flaky", {})], strict=False)
        explicit = producer.enqueue("flaky", strict=False, max_attempts=2)
        fallback = producer.enqueue("plain", strict=False)
        with worker_thread(worker_app):
            wait_until(lambda: count(admin, migrated, "dead_jobs") == 5, 30,
                       message="five dead jobs")
        assert dead_attempts(admin, migrated) == {
            one: (3, 3), many[0]: (3, 3), many[1]: (3, 3),  # the worker's declaration
            explicit: (2, 2),  # given at enqueue: it wins
            fallback: (5, 5),  # declared without one: the worker app's default
        }
        assert sorted(attempts) == [1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3]
        assert count(admin, migrated, "jobs") == 0
    finally:
        producer.close()
        worker_app.close()


def test_bulk_enqueue_by_copy_leaves_max_attempts_to_the_worker(
        pg_dsn: str, migrated: str, admin: psycopg.Connection[Any]) -> None:
    producer, worker_app, _ = producer_and_worker(pg_dsn, migrated)
    try:
        ids = producer.enqueue_many([("flaky", {"i": i}) for i in range(1_200)], strict=False)
        assert count(admin, migrated, "jobs", "max_attempts IS NULL") == len(ids)
        with worker_thread(worker_app, concurrency=20):
            wait_until(lambda: count(admin, migrated, "dead_jobs") == len(ids), 60,
                       message="every job dead")
        assert set(dead_attempts(admin, migrated).values()) == {(3, 3)}
    finally:
        producer.close()
        worker_app.close()
