"""The demo: the whole promise of jobqueue in one command.

It migrates a throw-away schema, enqueues three jobs in the same transaction
as a business row (plus one in a transaction that rolls back), runs a worker
in this process until every job has settled, and reports what happened.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql as pgsql

from jobqueue.app import JobQueue
from jobqueue.db.jobs import is_live
from jobqueue.dead import DeadFilter
from jobqueue.errors import PermanentError
from jobqueue.tasks import JobContext, Retry
from jobqueue.worker import WorkerConfig

DEMO_SCHEMA = "jobqueue_demo"
# Short backoff so the demo settles in a couple of seconds.
FAST_RETRY = Retry(base=0.2, cap=0.5, jitter=True)


class TransientError(Exception):
    """Stands for a timeout talking to a flaky remote service."""


@dataclass
class DemoResult:
    rows: list[dict[str, Any]]
    rolled_back_jobs: int
    elapsed: float
    attempts: dict[int, tuple[str, int]] = field(default_factory=dict)


def build_app(dsn: str | None,
              schema: str = DEMO_SCHEMA) -> tuple[JobQueue, dict[int, tuple[str, int]]]:
    app = JobQueue(dsn, schema=schema, default_retry=FAST_RETRY)
    attempts: dict[int, tuple[str, int]] = {}  # job id -> (task, last attempt seen)
    lock = threading.Lock()

    def seen(ctx: JobContext) -> None:
        with lock:
            attempts[ctx.id] = (ctx.task, ctx.attempt)

    @app.task(pass_context=True)
    def send_welcome_email(ctx: JobContext, user_id: int, email: str) -> None:
        seen(ctx)

    @app.task(pass_context=True, max_attempts=5)
    def sync_to_crm(ctx: JobContext, user_id: int) -> None:
        seen(ctx)
        if ctx.attempt < 3:
            raise TransientError(f"CRM timed out (attempt {ctx.attempt})")

    @app.task(pass_context=True, max_attempts=3)
    def charge_card(ctx: JobContext, user_id: int, cents: int) -> None:
        seen(ctx)
        raise RuntimeError("card declined by the test gateway")

    @app.task(pass_context=True)
    def audit_log(ctx: JobContext, user_id: int) -> None:
        seen(ctx)
        raise PermanentError("this job should never run: its transaction rolled back")

    return app, attempts


def run(dsn: str | None, schema: str = DEMO_SCHEMA, timeout: float = 60.0) -> DemoResult:
    started = time.monotonic()
    app, attempts = build_app(dsn, schema)
    real_dsn = app.dsn
    with psycopg.connect(real_dsn, autocommit=True) as admin:
        admin.execute(pgsql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(
            pgsql.Identifier(schema)))
    app.migrate()
    users = pgsql.Identifier(schema, "users")
    with psycopg.connect(real_dsn) as conn:
        conn.execute(pgsql.SQL("CREATE TABLE {} (id serial PRIMARY KEY, email text)").format(users))
        conn.commit()
        # The business write and its jobs commit together, or not at all.
        with conn.transaction():
            row = conn.execute(pgsql.SQL("INSERT INTO {} (email) VALUES (%s) RETURNING id")
                               .format(users), ("ada@example.com",)).fetchone()
            assert row is not None
            user_id = row[0]
            app.enqueue("send_welcome_email", {"user_id": user_id, "email": "ada@example.com"},
                        conn=conn)
            app.enqueue("sync_to_crm", {"user_id": user_id}, conn=conn)
            app.enqueue("charge_card", {"user_id": user_id, "cents": 1999}, conn=conn)
        # A transaction that fails after enqueueing: its job never exists.
        rolled_back = 0
        try:
            with conn.transaction():
                rolled_back = app.enqueue("audit_log", {"user_id": user_id}, conn=conn)
                raise _Rollback
        except _Rollback:
            pass

    worker = app.worker(WorkerConfig(concurrency=4, poll_interval=0.1, handle_signals=False))
    thread = threading.Thread(target=worker.run, name="jobqueue-demo-worker", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _live_jobs(app):
            time.sleep(0.05)
    finally:
        worker.request_stop()
        thread.join(timeout=35)
    dead = {d.id: d for d in app.dead.list(DeadFilter(include_replayed=True), limit=1000)}
    ghost = app.store.run(is_live(rolled_back))
    app.close()
    rows = []
    for job_id in sorted(set(attempts) | set(dead)):
        if job_id in dead:
            d = dead[job_id]
            rows.append({"job": job_id, "task": d.task, "outcome": "dead", "attempts": d.attempts,
                         "detail": f"{d.reason}: {d.last_error}"})
        else:
            task, n = attempts[job_id]
            detail = "first try" if n == 1 else f"retried {n - 1}x, then succeeded"
            rows.append({"job": job_id, "task": task, "outcome": "succeeded", "attempts": n,
                         "detail": detail})
    rows.append({"job": rolled_back, "task": "audit_log", "outcome": "never existed",
                 "attempts": 0, "detail": "enqueued in a transaction that rolled back"})
    return DemoResult(rows=rows, rolled_back_jobs=int(bool(ghost)),
                      elapsed=time.monotonic() - started, attempts=attempts)


def _live_jobs(app: JobQueue) -> int:
    return sum(q.queued + q.scheduled + q.running for q in app.stats())


class _Rollback(Exception):
    pass
