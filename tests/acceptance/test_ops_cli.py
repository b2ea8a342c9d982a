"""Operating jobqueue as a person does: doctor, stats --watch, a worker's /metrics and its logs.

Everything runs as ``python -m jobqueue ...`` subprocesses against the test
schema; the worker's JSON log (stderr) and its metrics endpoint are read the
way journald and Prometheus would read them.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from jobqueue import JobQueue
from tests.acceptance.support import Cli, WorkerProcess, Workers, describe, metrics_args
from tests.helpers import Samples, count, scrape, value, wait_until

OPS_APP = "tests.apps.ops_app:app"
@pytest.fixture
def producer(pg_dsn: str, migrated: str) -> Iterator[JobQueue]:
    queue = JobQueue(pg_dsn, schema=migrated)
    yield queue
    queue.close()


def start_with_metrics(workers: Workers, *args: str,
                       env: dict[str, str] | None = None) -> tuple[WorkerProcess, int]:
    port, metrics = metrics_args()
    worker = workers.start(*metrics, "--metrics-interval", "0.3", *args, app=OPS_APP, env=env)
    worker.wait_event("worker.started")
    return worker, port


def server_autovacuum(admin: psycopg.Connection[Any]) -> bool:
    row = admin.execute("SHOW autovacuum").fetchone()
    return row is not None and row[0] == "on"


def test_doctor_reports_a_held_transaction_with_its_pid_and_exits_1(
        cli: Cli, pg_dsn: str, admin: psycopg.Connection[Any]) -> None:
    cli.ok("migrate")
    with psycopg.connect(pg_dsn) as holder:
        pid = holder.info.backend_pid
        holder.execute("SELECT txid_current()")
        wait_until(lambda: admin.execute(
            "SELECT now() - xact_start > interval '2 seconds' FROM pg_stat_activity "
            "WHERE pid = %s", (pid,)).fetchone() == (True,), 10, message="an old transaction")

        result = cli("doctor", "--max-transaction-age", "1")
        assert result.returncode == 1, describe(result)
        assert "Traceback" not in result.stdout + result.stderr
        lines = result.stdout.splitlines()
        assert lines[0].startswith("jobqueue doctor: ") and "problem" in lines[0]
        mine = [line for line in lines if line.startswith("PROBLEM") and f"pid {pid} " in line]
        assert len(mine) == 1, describe(result)
        assert mine[0].split()[:2] == ["PROBLEM", "transactions"]
        assert "has had a transaction open for" in mine[0] and "idle in transaction" in mine[0]

        report = json.loads(cli("doctor", "--max-transaction-age", "1", "--json").stdout)
        assert report["ok"] is False
        tx = next(c for c in report["checks"] if c["name"] == "transactions")
        held = [t for t in tx["details"]["too_old"] if t["pid"] == pid]
        assert len(held) == 1 and held[0]["age"] >= 2.0
        holder.rollback()


def test_doctor_on_a_healthy_queue(cli: Cli, admin: psycopg.Connection[Any]) -> None:
    cli.ok("migrate")
    result = cli("doctor", "--max-transaction-age", "3600")
    lines = result.stdout.splitlines()
    assert [line.split()[1] for line in lines[1:]] == [
        "migrations", "autovacuum", "dead_tuples", "bloat", "history", "transactions",
        "xmin_horizon",
        "listen", "workers", "dead_jobs", "unserved_queues", "oldest_ready"]
    problems = [line for line in lines[1:] if line.startswith("PROBLEM")]
    if server_autovacuum(admin):
        assert result.returncode == 0, describe(result)
        assert lines[0].startswith("jobqueue doctor: healthy") and problems == []
    else:  # the CI server runs with autovacuum = off, and the doctor must say so
        assert result.returncode == 1, describe(result)
        assert len(problems) == 1 and "autovacuum is off" in problems[0]


def test_worker_metrics_and_stats_watch_during_a_run(
        cli: Cli, workers: Workers, producer: JobQueue,
        admin: psycopg.Connection[Any]) -> None:
    cli.ok("migrate")
    worker, port = start_with_metrics(workers, "--concurrency", "4", "--shutdown-timeout", "1")
    before = scrape(port)
    assert value(before, "jobqueue_listener_up") == 1
    assert value(before, "jobqueue_gauge_leader") == 1

    producer.enqueue_many([("quick", {"n": i}) for i in range(12)], strict=False)
    producer.enqueue("broken", {"n": 1}, strict=False)
    producer.enqueue("slow", {"seconds": 30}, strict=False)  # running while we look

    def settled() -> Samples | None:
        s = scrape(port)
        ok = (value(s, "jobqueue_jobs_total", queue="default", task="quick",
                    outcome="succeeded") == 12
              and value(s, "jobqueue_jobs_total", queue="default", task="broken",
                        outcome="dead") == 1
              and value(s, "jobqueue_queue_dead", queue="default") == 1
              and value(s, "jobqueue_queue_running", queue="default") == 1
              and value(s, "jobqueue_queue_ready", queue="default") == 0)
        return s if ok else None

    samples = wait_until(settled, 30, message="counters and gauges to show the run")
    assert value(samples, "jobqueue_worker_jobs_in_flight") == 1
    assert value(samples, "jobqueue_jobs_started_total", queue="default", task="slow") == 1
    assert value(samples, "jobqueue_job_start_latency_seconds_count", queue="default") == 14

    lines = cli.ok("stats", "--watch", "--json", "--count", "2", "--interval", "0.2")
    snapshots = [json.loads(line) for line in lines.splitlines()]
    assert len(snapshots) == 2
    default = {q["queue"]: q for q in snapshots[-1]["queues"]}["default"]
    assert (default["queued"], default["running"], default["dead"]) == (0, 1, 1)
    assert (default["succeeded_1m"], default["dead_1m"]) == (12, 1)
    assert default["per_second"] > 0 and default["workers"] == 1

    table = cli.ok("stats", "--watch", "--count", "1", "--interval", "0.2")
    assert table.startswith("jobqueue stats: schema ")
    rows = table.strip().splitlines()
    assert rows[2].split() == ["queue", "ready", "scheduled", "running", "dead", "oldest",
                               "ready", "jobs/s", "paused"]
    assert rows[4].split()[:5] == ["default", "0", "0", "1", "1"]

    assert worker.stop() == 0  # the slow job is released on the way out
    with pytest.raises(urllib.error.URLError):
        scrape(port)  # the endpoint went away with the worker
    assert count(admin, producer.schema, "jobs") == 1


def test_lifecycle_logs_are_json_with_ids_and_the_handlers_inherit_the_correlation_id(
        cli: Cli, workers: Workers, producer: JobQueue) -> None:
    cli.ok("migrate")
    worker = workers.start("--concurrency", "4", app=OPS_APP,
                           env={"JOBQUEUE_LOG_LEVEL": "debug"})
    worker.wait_event("worker.started")
    ids = {kind: producer.enqueue(task, {"n": i}, strict=False, correlation_id=f"req-{kind}")
           for i, (kind, task) in enumerate([("async", "quick"), ("sync", "quick_sync"),
                                             ("forked", "quick_forked"), ("chain", "chain")])}
    plain = producer.enqueue("quick", {"n": 99}, strict=False)

    # Five handled lines: four jobs, and the one the chain job enqueued.
    wait_until(lambda: len(worker.events("ops.handled")) == 6, 30, message="handlers ran")
    handled = {(e["kind"], e["n"]): e for e in worker.events("ops.handled")}
    for i, kind in enumerate(["async", "sync", "forked", "chain"]):
        line = handled[(kind, i)]
        assert line["job_id"] == ids[kind] and line["correlation_id"] == f"req-{kind}"
    assert "correlation_id" not in handled[("async", 99)]
    assert handled[("async", 99)]["job_id"] == plain

    # The job enqueued inside the chain handler carries its parent's correlation id.
    child = handled[("async", 1003)]
    assert child["correlation_id"] == "req-chain" and child["job_id"] not in ids.values()
    enqueued = [e for e in worker.events("job.enqueued") if e["job_id"] == child["job_id"]]
    assert len(enqueued) == 1 and enqueued[0]["correlation_id"] == "req-chain"
    assert enqueued[0]["level"] == "debug"

    wait_until(lambda: len(worker.events("job.succeeded")) == 6, 30, message="acks logged")
    succeeded = {e["job_id"]: e for e in worker.events("job.succeeded")}
    started = {e["job_id"]: e for e in worker.events("job.started")}
    for kind, job_id in ids.items():
        assert succeeded[job_id]["correlation_id"] == f"req-{kind}"
        assert succeeded[job_id]["attempt"] == 1 and succeeded[job_id]["queue"] == "default"
        assert succeeded[job_id]["duration"] >= 0
        assert started[job_id]["task"] == succeeded[job_id]["task"]
    assert worker.stop() == 0
    assert worker.events("worker.started") and worker.events("worker.stopping")


def test_killed_listen_backend_is_logged_exported_and_recovered(
        cli: Cli, workers: Workers, producer: JobQueue, admin: psycopg.Connection[Any]) -> None:
    cli.ok("migrate")
    worker, port = start_with_metrics(workers)
    schema = producer.schema
    row = admin.execute(f'SELECT backend_pid FROM "{schema}".workers').fetchone()
    assert row is not None and row[0] is not None
    admin.execute("SELECT pg_terminate_backend(%s)", (row[0],))

    degraded = worker.wait_event("listener.degraded")
    assert degraded["fallback"] == "polling"
    recovered = worker.wait_event("listener.recovered")
    assert recovered["down_for"] >= 0
    wait_until(lambda: admin.execute(f'SELECT backend_pid FROM "{schema}".workers')
               .fetchone() not in (None, row), 10, message="a new LISTEN session")
    samples = scrape(port)
    assert value(samples, "jobqueue_listener_degraded_total") == 1
    assert value(samples, "jobqueue_listener_up") == 1

    producer.enqueue_many([("quick", {"n": i}) for i in range(5)], strict=False)
    wait_until(lambda: value(scrape(port), "jobqueue_jobs_total", queue="default",
                             task="quick", outcome="succeeded") == 5, 20,
               message="jobs after the reconnect")
    assert worker.stop() == 0
    assert count(admin, schema, "jobs") == 0
