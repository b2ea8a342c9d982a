"""The self-checking LISTEN connection: real faults, jobs keep flowing, LISTEN comes back.

Two faults, both real:

- the listener's backend is terminated (``pg_terminate_backend``) while new
  logins are refused (its role loses LOGIN, as when a server is out of
  connection slots), so it stays down for as long as the test needs: jobs
  still flow by polling, ``listener.degraded`` is logged and exported, and once
  logins work again LISTEN comes back without a restart;
- the listener's backend is frozen with SIGSTOP: the TCP connection stays up,
  nothing errors, no notification arrives. Only the probe can tell; the
  listener must notice, reconnect to a fresh backend and recover.
"""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import structlog
from psycopg import sql

from jobqueue import JobQueue
from jobqueue.log import configure
from tests.acceptance.support import dsn_with
from tests.helpers import count, wait_until, worker_thread
from tests.integration.test_metrics import scrape, value


@pytest.fixture
def captured() -> Iterator[list[dict[str, Any]]]:
    configure()  # capture_logs swaps processors only; keep jobqueue's level filter around it
    with structlog.testing.capture_logs() as logs:
        yield logs


@pytest.fixture
def role_dsn(pg_dsn: str, migrated: str, admin: psycopg.Connection[Any]) -> Iterator[str]:
    """A DSN for a login role of our own, whose LOGIN the test can take away."""
    role = "jqt_role_" + uuid.uuid4().hex[:10]
    ident = sql.Identifier(role)
    schema = sql.Identifier(migrated)
    admin.execute(sql.SQL("CREATE ROLE {} LOGIN").format(ident))
    admin.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(schema, ident))
    admin.execute(sql.SQL("GRANT ALL ON ALL TABLES IN SCHEMA {} TO {}").format(schema, ident))
    admin.execute(sql.SQL("GRANT ALL ON ALL SEQUENCES IN SCHEMA {} TO {}").format(schema, ident))
    try:
        yield dsn_with(pg_dsn, user=role)
    finally:
        admin.execute(sql.SQL("ALTER ROLE {} LOGIN").format(ident))
        admin.execute(sql.SQL("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                              "WHERE usename = %s"), (role,))
        admin.execute(sql.SQL("DROP OWNED BY {}").format(ident))
        admin.execute(sql.SQL("DROP ROLE {}").format(ident))


def listener_backend(admin: psycopg.Connection[Any], schema: str, worker_id: str) -> int:
    row = admin.execute(sql.SQL("SELECT backend_pid FROM {} WHERE id = %s").format(
        sql.Identifier(schema, "workers")), (worker_id,)).fetchone()
    assert row is not None and row[0] is not None
    return int(row[0])


def events(logs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [e for e in logs if e.get("event") == name]


def done(admin: psycopg.Connection[Any], schema: str) -> int:
    return count(admin, schema, "done")


def make_app(dsn: str, schema: str, admin: psycopg.Connection[Any]) -> JobQueue:
    """An app whose one task records each job once in ``done`` (unique: no double runs)."""
    admin.execute(sql.SQL("CREATE TABLE {} (job bigint PRIMARY KEY)").format(
        sql.Identifier(schema, "done")))
    app = JobQueue(dsn, schema=schema)

    @app.task(pass_context=True)
    def record(ctx: Any) -> None:
        with psycopg.connect(admin.info.dsn, autocommit=True) as c:
            c.execute(sql.SQL("INSERT INTO {} VALUES (%s)").format(
                sql.Identifier(schema, "done")), (ctx.id,))

    return app


def test_killed_listen_backend_degrades_to_polling_and_recovers(
        role_dsn: str, pg_dsn: str, migrated: str, admin: psycopg.Connection[Any],
        captured: list[dict[str, Any]]) -> None:
    role = psycopg.conninfo.conninfo_to_dict(role_dsn)["user"]
    app = make_app(role_dsn, migrated, admin)  # the worker logs in as the role
    producer = JobQueue(pg_dsn, schema=migrated)  # the producer is not affected
    with worker_thread(app, poll_interval=1.0, probe_interval=0.5, probe_timeout=2.0,
                       metrics_port=0, metrics_addr="127.0.0.1") as worker:
        port = worker.metrics_port
        assert port
        listener = worker.services["listener"]
        assert value(scrape(port), "jobqueue_listener_up") == 1
        first_pid = listener_backend(admin, migrated, worker.id)

        # Logins refused from now on, then the LISTEN session is cut.
        admin.execute(sql.SQL("ALTER ROLE {} NOLOGIN").format(sql.Identifier(role)))
        admin.execute("SELECT pg_terminate_backend(%s)", (first_pid,))
        wait_until(lambda: not listener.healthy, 15, message="listener to notice")

        samples = scrape(port)
        assert value(samples, "jobqueue_listener_up") == 0
        assert value(samples, "jobqueue_listener_degraded_total") == 1
        degraded = events(captured, "listener.degraded")
        assert len(degraded) == 1 and degraded[0]["fallback"] == "polling"
        assert worker.services["fetcher"].fast_poll is True

        # Jobs keep flowing while LISTEN is down: polling finds them.
        ids = producer.enqueue_many([("record", None)] * 10, strict=False)
        wait_until(lambda: done(admin, migrated) == 10, 20, message="jobs by polling")
        assert not listener.healthy, "LISTEN came back too early to prove polling worked"

        admin.execute(sql.SQL("ALTER ROLE {} LOGIN").format(sql.Identifier(role)))
        wait_until(lambda: listener.healthy, 30, message="LISTEN to recover")
        second_pid = listener_backend(admin, migrated, worker.id)
        assert second_pid != first_pid
        recovered = events(captured, "listener.recovered")
        assert len(recovered) == 1 and recovered[0]["down_for"] > 0
        samples = scrape(port)
        assert value(samples, "jobqueue_listener_up") == 1
        assert value(samples, "jobqueue_listener_degraded_total") == 1

        ids += producer.enqueue_many([("record", None)] * 10, strict=False)
        wait_until(lambda: done(admin, migrated) == 20, 20, message="jobs after recovery")
    assert count(admin, migrated, "jobs") == 0
    assert count(admin, migrated, "done", "job = ANY(%s)", (ids,)) == 20
    producer.close()
    app.close()


def _local_postgres_process(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        os.kill(pid, 0)
    except (OSError, PermissionError):
        return False
    return b"postgres" in cmdline


def test_frozen_listen_backend_is_found_by_the_probe_and_replaced(
        app: JobQueue, admin: psycopg.Connection[Any],
        captured: list[dict[str, Any]]) -> None:
    app = make_app(app.dsn, app.schema, admin)
    schema = app.schema
    with worker_thread(app, poll_interval=1.0, probe_interval=0.3, probe_timeout=1.0,
                       metrics_port=0, metrics_addr="127.0.0.1") as worker:
        listener = worker.services["listener"]
        wait_until(lambda: listener.probe_seconds is not None, 10, message="a first probe")
        frozen = listener_backend(admin, schema, worker.id)
        if not _local_postgres_process(frozen):
            pytest.skip("the server's processes are not on this machine: cannot SIGSTOP one")
        os.kill(frozen, signal.SIGSTOP)
        try:
            # No error reaches the worker: only the missing probe reveals the fault.
            wait_until(lambda: events(captured, "listener.degraded"), 15,
                       message="the probe to notice the silence")
            assert "probe not delivered" in events(captured, "listener.degraded")[0]["error"]
            wait_until(lambda: listener.healthy and events(captured, "listener.recovered"),
                       15, message="a fresh LISTEN session")
            fresh = listener_backend(admin, schema, worker.id)
            assert fresh != frozen
            # The replacement really delivers: jobs are claimed at once, and the
            # probe keeps coming back.
            probes = listener.probes
            ids = app.enqueue_many([("record", None)] * 10)
            wait_until(lambda: done(admin, schema) == 10, 20, message="jobs after recovery")
            wait_until(lambda: listener.probes > probes + 1, 10, message="more probes")
            assert listener.healthy
            assert value(scrape(worker.metrics_port or 0), "jobqueue_listener_degraded_total") \
                == 1
        finally:
            os.kill(frozen, signal.SIGCONT)
    # The thawed backend finds its client gone and exits.
    wait_until(lambda: admin.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s",
                                     (frozen,)).fetchone() == (0,), 15,
               message="the frozen backend to exit")
    assert count(admin, schema, "done", "job = ANY(%s)", (ids,)) == 10
    app.close()
