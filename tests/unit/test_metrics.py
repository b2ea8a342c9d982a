"""Metrics, lifecycle events and correlation ids, without a database.

A worker's metrics live in a registry of its own (two workers in one process
must not share or collide), the lifecycle feeds exact counts into it, the
fleet-wide queue gauges appear only on the gauge leader, and a job's log
context (job id, correlation id) is bound for its own task only.
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
import structlog
from prometheus_client import REGISTRY

from jobqueue import PayloadError, PermanentError
from jobqueue.metrics import Snapshot, WorkerMetrics
from jobqueue.outcome import DeadReason, ErrorEntry, Outcome
from jobqueue.payload import CORRELATION_LIMIT, check_correlation_id, current_correlation_id
from jobqueue.protocol import probe_channel
from jobqueue.rows import ClaimedJob, QueueOverview, WorkerBeat
from jobqueue.worker.lifecycle import Lifecycle


class RecordingLog:
    """Stands in for the bound logger: keeps (level, event, fields)."""

    def __init__(self) -> None:
        self.records: list[tuple[str, str, dict[str, Any]]] = []

    def _record(self, level: str) -> Any:
        return lambda event, **kw: self.records.append((level, event, kw))

    def __getattr__(self, level: str) -> Any:
        return self._record(level)


def job(job_id: int = 7, task: str = "send", queue: str = "mail", attempt: int = 1,
        correlation_id: str | None = None, waited: float = 2.0) -> ClaimedJob:
    now = datetime.now(timezone.utc)
    return ClaimedJob(id=job_id, queue=queue, task=task, args={}, attempts=attempt,
                      max_attempts=3, priority=0, run_at=now - timedelta(seconds=waited),
                      created_at=now - timedelta(seconds=waited),
                      correlation_id=correlation_id)


@pytest.fixture(autouse=True)
def _own_context() -> Iterator[None]:
    """Lifecycle.started binds context variables, as it does inside a job's task; here
    the test's own context stands in for that task, so restore it afterwards."""
    token = current_correlation_id.set(None)
    yield
    current_correlation_id.reset(token)
    structlog.contextvars.clear_contextvars()


def sample(m: WorkerMetrics, name: str, **labels: str) -> float | None:
    return m.registry.get_sample_value(name, labels)


def overview(queue: str, **kw: Any) -> QueueOverview:
    base: dict[str, Any] = dict(queue=queue, queued=0, scheduled=0, running=0, dead=0,
                                oldest_age=None, succeeded_1m=0, retried_1m=0, dead_1m=0,
                                span_seconds=55.0, paused=False, workers=1)
    return QueueOverview(**{**base, **kw})


def test_each_worker_has_its_own_registry_and_none_uses_the_global_one() -> None:
    a, b = WorkerMetrics(), WorkerMetrics()
    life = Lifecycle(RecordingLog(), a)
    j = job()
    life.started(j)
    life.finished(Outcome.succeeded(j, 0.001))
    assert sample(a, "jobqueue_jobs_total", queue="mail", task="send", outcome="succeeded") == 1
    assert sample(b, "jobqueue_jobs_total", queue="mail", task="send", outcome="succeeded") \
        is None
    assert REGISTRY.get_sample_value("jobqueue_jobs_total",
                                     {"queue": "mail", "task": "send",
                                      "outcome": "succeeded"}) is None


def test_lifecycle_counts_every_outcome_exactly_and_times_it() -> None:
    m = WorkerMetrics()
    log = RecordingLog()
    life = Lifecycle(log, m)
    outcomes = [("succeeded", 5), ("retried", 3), ("dead", 2)]
    n = 0
    for outcome, times in outcomes:
        for _ in range(times):
            n += 1
            j = job(job_id=n, correlation_id=f"req-{n}")
            started = life.started(j)
            duration = time.monotonic() - started
            if outcome == "succeeded":
                life.finished(Outcome.succeeded(j, duration))
            elif outcome == "retried":
                life.finished(Outcome.retry(j, duration, 1.5, ErrorEntry.of_exception(
                    j.attempts, "w", ConnectionError("flaky"))))
            else:
                life.finished(Outcome.dead(j, duration, DeadReason.PERMANENT,
                                           ErrorEntry.of_exception(j.attempts, "w",
                                                                   PermanentError("no"))))
    for outcome, times in outcomes:
        assert sample(m, "jobqueue_jobs_total", queue="mail", task="send",
                      outcome=outcome) == times
    assert sample(m, "jobqueue_jobs_started_total", queue="mail", task="send") == 10
    assert sample(m, "jobqueue_job_duration_seconds_count", queue="mail", task="send") == 10
    # Each job waited ~2 s between being due and starting.
    assert sample(m, "jobqueue_job_start_latency_seconds_count", queue="mail") == 10
    total = sample(m, "jobqueue_job_start_latency_seconds_sum", queue="mail")
    assert total is not None and 19.0 < total < 30.0
    assert sample(m, "jobqueue_job_start_latency_seconds_bucket", queue="mail", le="1.0") == 0

    events = [(level, event) for level, event, _ in log.records]
    assert events.count(("debug", "job.started")) == 10
    assert events.count(("debug", "job.succeeded")) == 5
    assert events.count(("info", "job.retrying")) == 3
    assert events.count(("warning", "job.dead")) == 2
    retry = next(kw for _, e, kw in log.records if e == "job.retrying")
    assert retry["error"] == "ConnectionError" and retry["delay"] == 1.5
    assert retry["queue"] == "mail" and retry["attempt"] == 1 and retry["duration"] >= 0
    assert retry["correlation_id"].startswith("req-")


def test_a_start_latency_from_a_clock_ahead_counts_as_zero() -> None:
    m = WorkerMetrics()
    life = Lifecycle(RecordingLog(), m)
    life.started(job(waited=-5.0))  # run_at 5 s in the future by this host's clock
    assert sample(m, "jobqueue_job_start_latency_seconds_bucket", queue="mail",
                  le="0.001") == 1


def test_started_binds_the_job_context_for_its_own_task_only() -> None:
    life = Lifecycle(RecordingLog())
    structlog.contextvars.clear_contextvars()

    def in_job() -> dict[str, Any]:
        life.started(job(job_id=42, correlation_id="req-42"))
        assert current_correlation_id.get() == "req-42"
        # What a handler's own log line would be merged with.
        return dict(structlog.contextvars.get_contextvars())

    bound = contextvars.copy_context().run(in_job)
    assert bound == {"job_id": 42, "task": "send", "correlation_id": "req-42"}
    # The caller's context (another job, the worker's loop) saw none of it.
    assert structlog.contextvars.get_contextvars() == {}
    assert current_correlation_id.get() is None

    # A job without a correlation id does not invent one.
    plain = contextvars.copy_context().run(
        lambda: (life.started(job(job_id=43)), structlog.contextvars.get_contextvars())[1])
    assert plain == {"job_id": 43, "task": "send"}


def test_correlation_id_is_checked_before_any_sql_and_inherited_from_the_running_job() -> None:
    assert check_correlation_id("req-1") == "req-1"
    assert check_correlation_id(None) is None
    with pytest.raises(PayloadError, match="must be a string"):
        check_correlation_id(12)  # type: ignore[arg-type]
    with pytest.raises(PayloadError, match="limit"):
        check_correlation_id("x" * (CORRELATION_LIMIT + 1))
    assert check_correlation_id("x" * CORRELATION_LIMIT) == "x" * CORRELATION_LIMIT
    with pytest.raises(PayloadError, match="NUL"):
        check_correlation_id("a\x00b")

    def inside_a_job() -> tuple[str | None, str | None]:
        current_correlation_id.set("req-parent")
        return check_correlation_id(None), check_correlation_id("explicit")

    assert contextvars.copy_context().run(inside_a_job) == ("req-parent", "explicit")


def test_queue_gauges_appear_only_with_a_leader_snapshot() -> None:
    m = WorkerMetrics()
    assert sample(m, "jobqueue_gauge_leader") == 0
    assert sample(m, "jobqueue_queue_ready", queue="mail") is None

    m.leader = True
    m.set_snapshot(Snapshot(
        queues=[overview("mail", queued=3, scheduled=2, running=1, dead=4, oldest_age=12.5,
                         succeeded_1m=110, retried_1m=0, dead_1m=0, span_seconds=55.0),
                overview("idle", paused=True, workers=0)],
        workers=[WorkerBeat(id="w1", hostname="h", pid=1, queues=["mail"],
                            heartbeat_at=1_700_000_000.0, age=0.5)]))
    assert sample(m, "jobqueue_gauge_leader") == 1
    assert sample(m, "jobqueue_queue_ready", queue="mail") == 3
    assert sample(m, "jobqueue_queue_scheduled", queue="mail") == 2
    assert sample(m, "jobqueue_queue_running", queue="mail") == 1
    assert sample(m, "jobqueue_queue_dead", queue="mail") == 4
    assert sample(m, "jobqueue_queue_oldest_ready_age_seconds", queue="mail") == 12.5
    assert sample(m, "jobqueue_queue_oldest_ready_age_seconds", queue="idle") == 0
    assert sample(m, "jobqueue_queue_jobs_per_second", queue="mail") == 2.0
    assert sample(m, "jobqueue_queue_paused", queue="idle") == 1
    assert sample(m, "jobqueue_queue_workers", queue="idle") == 0
    assert sample(m, "jobqueue_worker_last_heartbeat_timestamp_seconds", worker="w1",
                  hostname="h") == 1_700_000_000.0
    assert sample(m, "jobqueue_workers") == 1

    m.leader = False
    m.set_snapshot(None)  # a leader that lost its session stops exporting them
    assert sample(m, "jobqueue_queue_ready", queue="mail") is None


def test_worker_state_gauges_read_the_live_objects() -> None:
    class Listener:
        healthy = False
        degradations = 2
        probe_seconds: float | None = 0.004

    m = WorkerMetrics()
    inflight = [1, 2, 3]
    m.in_flight = lambda: len(inflight)
    m.concurrency = 8
    m.listener = Listener()
    assert sample(m, "jobqueue_worker_jobs_in_flight") == 3
    inflight.pop()
    assert sample(m, "jobqueue_worker_jobs_in_flight") == 2
    assert sample(m, "jobqueue_worker_concurrency") == 8
    assert sample(m, "jobqueue_listener_up") == 0
    assert sample(m, "jobqueue_listener_degraded_total") == 2
    assert sample(m, "jobqueue_listener_probe_seconds") == 0.004


def test_rate_is_finished_attempts_over_the_span_they_cover() -> None:
    q = overview("a", succeeded_1m=90, retried_1m=6, dead_1m=4, span_seconds=50.0)
    assert q.per_second == 2.0
    assert q.as_dict()["per_second"] == 2.0
    assert overview("b", span_seconds=0.0).per_second == 0.0


def test_probe_channel_is_per_worker_and_a_valid_identifier_length() -> None:
    long = "s" * 63
    a = probe_channel(long, "host:1:" + "x" * 200)
    b = probe_channel(long, "host:2:" + "x" * 200)
    assert a != b
    assert len(a.encode()) <= 63
    assert probe_channel("s", "w") == probe_channel("s", "w")


def test_backpressure_gauges_only_for_limited_queues() -> None:
    m = WorkerMetrics()
    m.leader = True
    m.set_snapshot(Snapshot(queues=[overview("free", queued=50),
                                    overview("capped", queued=10, max_ready=10),
                                    overview("roomy", queued=3, max_ready=10)], workers=[]))
    assert sample(m, "jobqueue_queue_max_ready", queue="capped") == 10
    assert sample(m, "jobqueue_queue_full", queue="capped") == 1
    assert sample(m, "jobqueue_queue_full", queue="roomy") == 0
    assert sample(m, "jobqueue_queue_max_ready", queue="free") is None
    assert sample(m, "jobqueue_queue_full", queue="free") is None
