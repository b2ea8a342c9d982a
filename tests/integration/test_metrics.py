"""``/metrics`` of a running worker, scraped over HTTP as Prometheus would.

Counters move with the jobs that run and match them exactly; the queue gauges
(refreshed by the one gauge leader) equal what is in the tables; the outcome
buckets behind "jobs/s" count every outcome once; only one worker of a fleet
exports the gauges, and another takes over when it leaves.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from jobqueue import ConfigError, JobQueue, PermanentError
from tests.helpers import Samples, count, scrape, value, wait_until, worker_thread


@pytest.fixture
def gate() -> Iterator[threading.Event]:
    event = threading.Event()
    yield event
    event.set()  # never leave a handler waiting


def metrics_config(**extra: Any) -> dict[str, Any]:
    return {"metrics_port": 0, "metrics_addr": "127.0.0.1", "metrics_interval": 0.2,
            **extra}


def test_scrape_during_a_run_counters_move_and_depth_gauges_are_exact(
        app: JobQueue, admin: psycopg.Connection[Any], gate: threading.Event) -> None:
    @app.task(queue="work")
    async def quick(n: int) -> None:
        await asyncio.sleep(0)

    @app.task(queue="work")
    def held(n: int) -> None:
        gate.wait(60)

    @app.task(queue="work", max_attempts=1)
    def broken(n: int) -> None:
        raise PermanentError("no")

    # Nobody serves "idle": three ready jobs and two scheduled for later.
    app.enqueue_many([("quick", {"n": i}) for i in range(3)], queue="idle")
    app.enqueue_many([("quick", {"n": i}) for i in range(2)], queue="idle", delay=3600)

    with worker_thread(app, queues=("work",), concurrency=4,
                       **metrics_config()) as worker:
        port = worker.metrics_port
        assert port

        app.enqueue_many([("quick", {"n": i}) for i in range(20)])
        wait_until(lambda: value(scrape(port), "jobqueue_jobs_total", queue="work",
                                 task="quick", outcome="succeeded") == 20, 20,
                   message="20 quick jobs counted")
        app.enqueue("broken", {"n": 1})
        app.enqueue_many([("held", {"n": i}) for i in range(2)])
        app.enqueue_many([("quick", {"n": i}) for i in range(15)])

        # During the run (two jobs held running), the counters have moved by
        # exactly what ran, and the gauges show the tables as they are.
        expected = {
            ("jobqueue_queue_ready", "idle"): 3, ("jobqueue_queue_scheduled", "idle"): 2,
            ("jobqueue_queue_running", "idle"): 0, ("jobqueue_queue_workers", "idle"): 0,
            ("jobqueue_queue_ready", "work"): 0, ("jobqueue_queue_scheduled", "work"): 0,
            ("jobqueue_queue_running", "work"): 2, ("jobqueue_queue_dead", "work"): 1,
            ("jobqueue_queue_workers", "work"): 1,
        }

        def settled() -> Samples | None:
            s = scrape(port)
            got = {k: value(s, k[0], queue=k[1]) for k in expected}
            return s if got == expected else None

        samples = wait_until(settled, 20, message="gauges equal to the tables")
        assert value(samples, "jobqueue_jobs_total", queue="work", task="quick",
                     outcome="succeeded") == 35
        assert value(samples, "jobqueue_jobs_total", queue="work", task="broken",
                     outcome="dead") == 1
        assert value(samples, "jobqueue_jobs_started_total", queue="work", task="held") == 2
        assert value(samples, "jobqueue_worker_jobs_in_flight") == 2
        assert value(samples, "jobqueue_listener_up") == 1
        assert value(samples, "jobqueue_gauge_leader") == 1
        assert value(samples, "jobqueue_job_duration_seconds_count", queue="work",
                     task="quick") == 35
        assert value(samples, "jobqueue_job_start_latency_seconds_count", queue="work") == 38
        idle_age = value(samples, "jobqueue_queue_oldest_ready_age_seconds", queue="idle")
        assert idle_age is not None and idle_age > 0
        beat = value(samples, "jobqueue_worker_last_heartbeat_timestamp_seconds",
                     worker=worker.id, hostname=socket.gethostname())
        assert beat is not None and beat > 0
        rate = value(samples, "jobqueue_queue_jobs_per_second", queue="work")
        assert rate is not None and rate > 0

        # The same numbers as in the tables, read independently.
        assert count(admin, app.schema, "jobs", "queue = 'work' AND state = 'running'") == 2
        assert count(admin, app.schema, "dead_jobs", "queue = 'work'") == 1

        gate.set()
        wait_until(lambda: value(scrape(port), "jobqueue_jobs_total", queue="work",
                                 task="held", outcome="succeeded") == 2, 20,
                   message="held jobs counted")
        wait_until(lambda: value(scrape(port), "jobqueue_queue_running", queue="work") == 0,
                   20, message="running gauge back to 0")


def test_outcome_buckets_count_every_outcome_once(app: JobQueue,
                                                  admin: psycopg.Connection[Any]) -> None:
    @app.task()
    def ok(n: int) -> None:
        return None

    @app.task(max_attempts=2)
    def flaky(n: int) -> None:
        raise ConnectionError("try again")

    app.enqueue_many([("ok", {"n": i}) for i in range(40)])
    app.enqueue_many([("flaky", {"n": i}) for i in range(5)], queue="other")
    with worker_thread(app, queues=("default", "other"), concurrency=8):
        # Every flaky job fails twice: one retry (after a short backoff), then dead.
        wait_until(lambda: count(admin, app.schema, "dead_jobs") == 5
                   and count(admin, app.schema, "jobs") == 0, 30, message="all settled")

    totals = admin.execute(
        f'SELECT queue, sum(succeeded), sum(retried), sum(dead) FROM "{app.schema}".job_counts '
        "GROUP BY queue ORDER BY queue").fetchall()
    assert totals == [("default", 40, 0, 0), ("other", 0, 5, 5)]
    with app.connect() as conn:
        by_queue = {q.queue: q for q in app.stats(conn)}
    assert (by_queue["default"].succeeded_1m, by_queue["default"].dead_1m) == (40, 0)
    assert (by_queue["other"].retried_1m, by_queue["other"].dead_1m) == (5, 5)
    assert by_queue["other"].dead == 5
    assert 50.0 <= by_queue["default"].span_seconds <= 60.0
    assert by_queue["default"].per_second == pytest.approx(
        40 / by_queue["default"].span_seconds, rel=1e-3)


def test_one_gauge_leader_at_a_time_and_another_takes_over(app: JobQueue) -> None:
    app.enqueue_many([("anything", {})] * 4, strict=False, queue="unserved")
    with worker_thread(app, **metrics_config()) as first, \
            worker_thread(app, **metrics_config()) as second:
        ports = {first.id: first.metrics_port, second.id: second.metrics_port}

        def leaders() -> list[str]:
            return [wid for wid, port in ports.items() if port is not None
                    and value(scrape(port), "jobqueue_gauge_leader") == 1]

        wait_until(lambda: len(leaders()) == 1, 10, message="a gauge leader")
        # Several refresh intervals later, still exactly one, and only it exports.
        for _ in range(5):
            assert len(leaders()) == 1
        leader = leaders()[0]
        follower = second if leader == first.id else first
        leading = first if leader == first.id else second
        assert follower.metrics_port is not None and leading.metrics_port is not None
        assert value(scrape(leading.metrics_port), "jobqueue_queue_ready",
                     queue="unserved") == 4
        assert value(scrape(follower.metrics_port), "jobqueue_queue_ready",
                     queue="unserved") is None

        leading.request_stop()
        wait_until(lambda: value(scrape(follower.metrics_port or 0),
                                 "jobqueue_queue_ready", queue="unserved") == 4,
                   15, message="the other worker to take over the gauges")
        assert value(scrape(follower.metrics_port), "jobqueue_gauge_leader") == 1


def test_a_taken_metrics_port_fails_the_start_before_registering(
        app: JobQueue, admin: psycopg.Connection[Any]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=f"cannot serve metrics on 127.0.0.1:{port}"), \
                worker_thread(app, metrics_port=port, metrics_addr="127.0.0.1"):
            pass
    assert count(admin, app.schema, "workers") == 0
