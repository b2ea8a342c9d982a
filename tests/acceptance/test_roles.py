"""Least privilege: ``jobqueue migrate --grant-producer ROLE --grant-worker ROLE``.

The schema's owner migrates; a web app enqueues as a producer role and the
workers run as a worker role. Neither may create, drop or truncate anything,
the producer may not read dead jobs (or the args of live ones), and a role
granted nothing gets one line that names the missing privilege.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from jobqueue import JobContext, JobQueue, PrivilegeError, Retry
from tests.acceptance import support
from tests.helpers import count, make_role, wait_until, worker_thread


@pytest.fixture
def producer_role(pg_dsn: str) -> Iterator[str]:
    yield from make_role(pg_dsn)


@pytest.fixture
def worker_role(pg_dsn: str) -> Iterator[str]:
    yield from make_role(pg_dsn)


@pytest.fixture
def bare_role(pg_dsn: str) -> Iterator[str]:
    yield from make_role(pg_dsn)


def as_role(pg_dsn: str, role: str) -> str:
    return support.dsn_with(pg_dsn, user=role)


def refused(conn: psycopg.Connection[Any], statement: sql.Composable) -> str:
    """Run ``statement`` as the role; it must be refused (the transaction is rolled back)."""
    with pytest.raises(psycopg.errors.InsufficientPrivilege) as caught:
        conn.execute(statement)
    conn.rollback()
    return str(caught.value)


def test_the_grants_are_printed_with_the_schema_sql(cli: support.Cli, schema: str) -> None:
    out = cli.ok("migrate", "--sql", "--grant-producer", "web", "--grant-worker", "jobs_worker")
    assert f'GRANT USAGE ON SCHEMA "{schema}" TO "web";' in out
    assert f'GRANT INSERT, SELECT (id, queue, run_at, unique_key) ON "{schema}".jobs TO "web";' \
        in out
    assert f'GRANT USAGE ON SCHEMA "{schema}" TO "jobs_worker";' in out
    assert "TRUNCATE" not in out.split("-- producer rights")[1]


def test_a_producer_role_enqueues_and_can_do_nothing_else(
        cli: support.Cli, pg_dsn: str, schema: str, producer_role: str,
        admin: psycopg.Connection[Any]) -> None:
    out = cli.ok("migrate", "--grant-producer", producer_role)
    assert f"granted producer rights on schema {schema!r} to {producer_role}" in out
    dsn = as_role(pg_dsn, producer_role)
    producer = JobQueue(dsn, schema=schema)
    try:
        producer.enqueue("send", {"to": "a"}, strict=False)
        first = producer.enqueue("send", {"to": "b"}, strict=False, unique_key="b")
        assert producer.enqueue("send", {"to": "b"}, strict=False, unique_key="b") == first
        producer.enqueue_many([("send", {"i": i}) for i in range(5)], strict=False)
        producer.enqueue_many([("bulk", {"i": i}) for i in range(1500)], strict=False)  # COPY
        # On the caller's connection, in its transaction, beside its own write.
        with psycopg.connect(dsn) as conn:
            conn.execute("CREATE TEMP TABLE orders (n int)")
            conn.execute("INSERT INTO orders VALUES (1)")
            producer.enqueue("send", {"to": "c"}, conn=conn, strict=False)
            conn.commit()
        assert count(admin, schema, "jobs") == 1 + 1 + 5 + 1500 + 1

        # Operator tools are not a producer's: one line, naming what is missing.
        with pytest.raises(PrivilegeError, match=r"permission denied for table dead_jobs: "
                                                  r"`jobqueue migrate --grant-producer"):
            producer.dead.list()
    finally:
        producer.close()

    with psycopg.connect(dsn) as conn:
        jobs = sql.Identifier(schema, "jobs")
        dead = sql.Identifier(schema, "dead_jobs")
        assert "must be owner" in refused(conn, sql.SQL("DROP TABLE {}").format(jobs))
        refused(conn, sql.SQL("TRUNCATE {}").format(jobs))
        refused(conn, sql.SQL("SELECT * FROM {}").format(dead))
        refused(conn, sql.SQL("SELECT args FROM {}").format(jobs))
        refused(conn, sql.SQL("DELETE FROM {}").format(jobs))
        refused(conn, sql.SQL("CREATE TABLE {} (x int)").format(sql.Identifier(schema, "mine")))
    # And the CLI's commands for operators say so in one line too.
    result = cli("dead", "list", env={"JOBQUEUE_DSN": dsn})
    support.assert_one_error_line(result, "permission denied for table dead_jobs")


def test_a_worker_role_runs_retries_dead_letters_rescues_and_fires_cron(
        cli: support.Cli, pg_dsn: str, schema: str, worker_role: str,
        admin: psycopg.Connection[Any]) -> None:
    cli.ok("migrate", "--grant-worker", worker_role)
    app = JobQueue(as_role(pg_dsn, worker_role), schema=schema)
    tries: dict[str, int] = {}

    @app.task(pass_context=True, retry=Retry(base=0, jitter=False), max_attempts=3)
    def flaky(ctx: JobContext) -> None:
        tries["flaky"] = ctx.attempt
        if ctx.attempt < 2:
            raise RuntimeError("first try fails")

    @app.task(retry=Retry(base=0, jitter=False), max_attempts=2)
    def broken() -> None:
        raise RuntimeError("always")

    @app.task()
    def tick() -> None:
        return None

    app.cron("every-second", "* * * * * *", tick)
    owner = JobQueue(pg_dsn, schema=schema)
    try:
        owner.enqueue("flaky", strict=False)
        broken_id = owner.enqueue("broken", strict=False)
        # A job held by a worker that vanished: the leader rescues it.
        admin.execute(sql.SQL(
            "INSERT INTO {} (queue, task, state, attempts, max_attempts, locked_by, "
            "locked_until) VALUES ('default', 'tick', 'running', 1, 1, 'ghost', "
            "now() - interval '1 minute') RETURNING id").format(sql.Identifier(schema, "jobs")))
        with worker_thread(app, worker_timeout=5.0, lease=5.0, heartbeat_interval=1.0):
            wait_until(lambda: count(admin, schema, "dead_jobs") == 2
                       and tries.get("flaky") == 2
                       and count(admin, schema, "cron", "last_fire_at IS NOT NULL") == 1,
                       30, message="retry, dead letter, rescue and a cron tick")
        reasons = dict(admin.execute(sql.SQL("SELECT task, reason FROM {}").format(
            sql.Identifier(schema, "dead_jobs"))).fetchall())
        assert reasons == {"broken": "exhausted", "tick": "crashed"}
        assert count(admin, schema, "dead_jobs", "id = %s", (broken_id,)) == 1
    finally:
        app.close()
        owner.close()
    with psycopg.connect(as_role(pg_dsn, worker_role)) as conn:
        jobs = sql.Identifier(schema, "jobs")
        refused(conn, sql.SQL("DROP TABLE {}").format(jobs))
        refused(conn, sql.SQL("TRUNCATE {}").format(jobs))
        refused(conn, sql.SQL("UPDATE {} SET paused = true").format(
            sql.Identifier(schema, "queues")))


def test_a_role_granted_nothing_gets_one_line_and_keeps_its_transaction(
        cli: support.Cli, pg_dsn: str, migrated: str, bare_role: str) -> None:
    dsn = as_role(pg_dsn, bare_role)
    app = JobQueue(dsn, schema=migrated)
    try:
        with psycopg.connect(dsn) as conn:
            conn.execute("CREATE TEMP TABLE orders (n int)")
            with pytest.raises(PrivilegeError, match=rf"permission denied for schema "
                                                     rf"'{migrated}': `jobqueue migrate "
                                                     rf"--grant-producer ROLE`"):
                app.enqueue("send", {}, conn=conn, strict=False)
            conn.execute("INSERT INTO orders VALUES (1)")  # the transaction goes on
            conn.commit()
    finally:
        app.close()
    result = cli("worker", "--app", "tests.apps.notify_app:app", "--burst",
                 env={"JOBQUEUE_DSN": dsn})
    support.assert_one_error_line(result, "permission denied for schema", "--grant-worker",
                                  logs_allowed=True)
    support.assert_one_error_line(cli("enqueue", "noop", env={"JOBQUEUE_DSN": dsn}),
                                  "permission denied for schema")


def test_reading_outcomes_is_a_right_of_its_own(
        cli: support.Cli, pg_dsn: str, schema: str, producer_role: str, worker_role: str,
        admin: psycopg.Connection[Any]) -> None:
    cli.ok("migrate", "--grant-producer", producer_role, "--grant-worker", worker_role)
    producer = JobQueue(as_role(pg_dsn, producer_role), schema=schema)
    workers = JobQueue(as_role(pg_dsn, worker_role), schema=schema)

    @workers.task
    def send(to: str) -> str:
        return f"sent to {to}"

    try:
        first = producer.enqueue("send", {"to": "a"}, strict=False)
        # A producer reads no outcomes (they hold args and results) ...
        with pytest.raises(PrivilegeError, match="--grant-results"):
            producer.job(first)
        out = cli.ok("migrate", "--grant-results", producer_role)
        assert f"granted results rights on schema {schema!r} to {producer_role}" in out
        # ... until granted: then it reads, and waits (its awaited flag, nothing else).
        assert producer.job(first).state == "queued"
        second = producer.enqueue("send", {"to": "b"}, strict=False)
        with worker_thread(workers):
            assert producer.result(second, timeout=20) == "sent to b"
            assert producer.result(first, timeout=20) == "sent to a"
        assert {e.id for e in producer.history()} == {first, second}
    finally:
        producer.close()
        workers.close()
    with psycopg.connect(as_role(pg_dsn, producer_role)) as conn:
        jobs = sql.Identifier(schema, "jobs")
        refused(conn, sql.SQL("UPDATE {} SET args = '{{}}'").format(jobs))
        refused(conn, sql.SQL("DELETE FROM {}").format(sql.Identifier(schema, "job_history")))


def test_workflows_run_with_least_privilege(
        cli: support.Cli, pg_dsn: str, schema: str, producer_role: str, worker_role: str,
        admin: psycopg.Connection[Any]) -> None:
    from jobqueue import chain, chord, group

    cli.ok("migrate", "--grant-producer", producer_role, "--grant-worker", worker_role,
           "--grant-results", producer_role)
    producer = JobQueue(as_role(pg_dsn, producer_role), schema=schema)
    workers = JobQueue(as_role(pg_dsn, worker_role), schema=schema)

    @workers.task
    def part(n: int) -> int:
        return n

    @workers.task(pass_context=True)
    def join(ctx: JobContext) -> list[int]:
        return list(ctx.parent_results)

    @workers.task(max_attempts=1)
    def fail() -> None:
        raise RuntimeError("no")

    try:
        ok = producer.enqueue_workflow(chord(group(producer.sig("part", {"n": n}, strict=False)
                                                   for n in range(3)),
                                             producer.sig("join", strict=False)))
        broken = producer.enqueue_workflow(chain(producer.sig("fail", strict=False),
                                                 producer.sig("join", strict=False)))
        with worker_thread(workers):
            assert producer.result(ok.ids[-1], timeout=20) == [0, 1, 2]
            wait_until(lambda: count(admin, schema, "dead_jobs") == 2, 20,
                       message="the failure and its dependent")
        assert producer.workflow(broken.id).nodes[1].reason == "dependency_failed"
    finally:
        producer.close()
        workers.close()
