"""Prometheus metrics of a worker (``jobqueue worker --metrics-port PORT``).

Each worker owns a :class:`WorkerMetrics` with its own ``CollectorRegistry``
(never the process-global one), so several workers in one process, as in
tests, keep their numbers apart.

Two kinds of numbers:

- what this worker sees: jobs started and finished by task and outcome, the
  handler duration and enqueue-to-start latency histograms, jobs in flight,
  the health of its LISTEN connection;
- what the database knows about the whole fleet: depth, scheduled, running,
  dead and the oldest ready age per queue, jobs/s over the last minute, and
  every worker's last heartbeat. Those need SQL, so one worker of the fleet
  (the gauge leader, see :mod:`jobqueue.worker.gauges`) refreshes them on an
  interval and only the leader exports them: a scrape never runs a query, and
  the fleet runs one overview query per interval however many workers there
  are. Aggregate across instances with ``max by (queue)``.

And one number that only a producer sees: jobs it enqueued into a queue already
at its ``max_ready`` that warns rather than rejects (see
:mod:`jobqueue.backpressure`). Enqueues happen in the web apps and scripts that
produce, not in workers, so no worker could count them, and no table records
them (a check that wrote a row would cost every enqueue a write). They are a
process counter, ``app.over_limit_counts``, that a producer exports through its
own registry with :class:`EnqueueCollector`; ``jobqueue_queue_ready`` (from the
gauge leader) shows how full the queue is.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from jobqueue.rows import QueueOverview, WorkerBeat

# Handler durations: from a quick async call to a long batch job.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                    60.0, 120.0, 300.0, 900.0, 3600.0)
# Enqueue-to-start: milliseconds when idle workers are woken by NOTIFY, the
# poll interval when LISTEN is down, minutes when the fleet falls behind.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                   10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)


class OverLimitSource(Protocol):
    """What :class:`EnqueueCollector` reads: a :class:`jobqueue.JobQueue`."""

    @property
    def over_limit_counts(self) -> dict[str, int]: ...


class EnqueueCollector(Collector):
    """A producer's enqueue counters, computed at scrape time, for the producer's own
    registry: ``prometheus_client.REGISTRY.register(EnqueueCollector(app))``."""

    def __init__(self, source: OverLimitSource) -> None:
        self.source = source

    def collect(self) -> Iterator[Metric]:
        over = CounterMetricFamily(
            "jobqueue_enqueue_over_limit", "Jobs this process enqueued into a queue that "
            "already held max_ready ready jobs (one that warns when full).", labels=["queue"])
        for queue, jobs in sorted(self.source.over_limit_counts.items()):
            over.add_metric([queue], jobs)
        yield over


class JobLike(Protocol):
    id: int
    queue: str
    task: str


class ListenerLike(Protocol):
    healthy: bool
    degradations: int
    probe_seconds: float | None


class ProcessPoolLike(Protocol):
    @property
    def size(self) -> int: ...

    @property
    def replaced(self) -> Mapping[str, int]: ...


@dataclass
class Snapshot:
    """The fleet-wide numbers of the last leader refresh."""

    queues: list[QueueOverview]
    workers: list[WorkerBeat]
    refreshed_at: float = field(default_factory=time.time)


class WorkerMetrics:
    """The metrics of one worker, in a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        labels = ["queue", "task"]
        self.jobs = Counter("jobqueue_jobs", "Finished attempts, by outcome "
                            "(succeeded, retried, dead, lease_lost).", [*labels, "outcome"],
                            registry=self.registry)
        self.started = Counter("jobqueue_jobs_started", "Attempts started by this worker.",
                               labels, registry=self.registry)
        self.duration = Histogram("jobqueue_job_duration_seconds",
                                  "Handler run time of finished attempts.", labels,
                                  buckets=DURATION_BUCKETS, registry=self.registry)
        self.latency = Histogram("jobqueue_job_start_latency_seconds",
                                 "From when a job was due (enqueued, or its delay or retry "
                                 "came due) to its start.", ["queue"],
                                 buckets=LATENCY_BUCKETS, registry=self.registry)
        # Read at scrape time from the worker's live objects (set by the worker).
        self.in_flight: Callable[[], int] = lambda: 0
        self.concurrency = 0
        self.listener: ListenerLike | None = None
        self.processes: ProcessPoolLike | None = None
        self.leader = False
        self._snapshot: Snapshot | None = None
        self._lock = threading.Lock()
        # Label children cached per (queue, task): labels() takes a lock and a
        # dict lookup of its own; the hot path should pay that once per task.
        self._children: dict[tuple[str, str], tuple[Any, ...]] = {}
        self._latency: dict[str, Any] = {}
        self.registry.register(_StateCollector(self))
        self._server: Any = None

    # -- per job (called on the worker's event loop) -----------------------------------

    def _for(self, queue: str, task: str) -> tuple[Any, ...]:
        key = (queue, task)
        children = self._children.get(key)
        if children is None:
            children = (self.started.labels(queue, task),
                        self.jobs.labels(queue, task, "succeeded"),
                        self.jobs.labels(queue, task, "retried"),
                        self.jobs.labels(queue, task, "dead"),
                        self.duration.labels(queue, task),
                        self.jobs.labels(queue, task, "lease_lost"))
            self._children[key] = children
        return children

    def job_started(self, job: JobLike, latency: float | None) -> None:
        self._for(job.queue, job.task)[0].inc()
        if latency is not None:
            hist = self._latency.get(job.queue)
            if hist is None:
                hist = self._latency[job.queue] = self.latency.labels(job.queue)
            hist.observe(max(0.0, latency))  # clocks of two hosts may disagree a little

    def job_finished(self, job: JobLike, outcome: str, duration: float | None) -> None:
        children = self._for(job.queue, job.task)
        index = {"succeeded": 1, "retried": 2, "dead": 3, "lease_lost": 5}[outcome]
        children[index].inc()
        if duration is not None:
            children[4].observe(duration)

    # -- fleet-wide gauges (set by the gauge leader) ------------------------------------

    def set_snapshot(self, snapshot: Snapshot | None) -> None:
        with self._lock:
            self._snapshot = snapshot

    @property
    def snapshot(self) -> Snapshot | None:
        with self._lock:
            return self._snapshot

    # -- HTTP --------------------------------------------------------------------------

    def serve(self, port: int, addr: str = "0.0.0.0") -> int:
        """Serve ``/metrics`` on ``addr:port`` from a daemon thread; the bound port."""
        server, _thread = start_http_server(port, addr=addr, registry=self.registry)
        self._server = server
        return int(server.server_port)

    def close(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()


class _StateCollector(Collector):
    """Gauges computed at scrape time from the worker's state and the last snapshot."""

    def __init__(self, metrics: WorkerMetrics) -> None:
        self.m = metrics

    def collect(self) -> Iterator[Metric]:
        m = self.m
        yield _gauge("jobqueue_worker_jobs_in_flight", "Jobs this worker is running.",
                     m.in_flight())
        yield _gauge("jobqueue_worker_concurrency", "Jobs this worker may run at once.",
                     m.concurrency)
        listener = m.listener
        if listener is not None:
            yield _gauge("jobqueue_listener_up", "1 while this worker's LISTEN connection "
                         "answers its probes; 0 while it has fallen back to polling.",
                         1 if listener.healthy else 0)
            degraded = CounterMetricFamily(
                "jobqueue_listener_degraded", "Times this worker's LISTEN connection was "
                "found down (lost, or silent to its probe).")
            degraded.add_metric([], listener.degradations)
            yield degraded
            if listener.probe_seconds is not None:
                yield _gauge("jobqueue_listener_probe_seconds",
                             "Round trip of the last LISTEN probe NOTIFY.",
                             listener.probe_seconds)
        processes = m.processes
        if processes is not None:
            yield _gauge("jobqueue_worker_processes", "Child processes of this worker's pool "
                         "for executor=\"process\" tasks (--processes).", processes.size)
            replaced = CounterMetricFamily(
                "jobqueue_worker_process_replacements", "Pool children replaced, by why: "
                "crashed (died without answering), killed (by the worker, on a timeout or a "
                "cancel), recycled (--max-jobs-per-child, --max-memory).", labels=["reason"])
            for reason in ("crashed", "killed", "recycled"):
                replaced.add_metric([reason], processes.replaced.get(reason, 0))
            yield replaced
        yield _gauge("jobqueue_gauge_leader", "1 on the worker that refreshes and exports "
                     "the fleet-wide queue gauges.", 1 if m.leader else 0)
        snapshot = m.snapshot
        if snapshot is None:
            return
        yield _gauge("jobqueue_gauges_refreshed_timestamp_seconds",
                     "When the queue gauges were last read from the database.",
                     snapshot.refreshed_at)
        yield from _queue_families(snapshot.queues)
        beats = GaugeMetricFamily("jobqueue_worker_last_heartbeat_timestamp_seconds",
                                  "Last heartbeat of each registered worker.",
                                  labels=["worker", "hostname"])
        for w in snapshot.workers:
            beats.add_metric([w.id, w.hostname], w.heartbeat_at)
        yield beats
        yield _gauge("jobqueue_workers", "Registered workers.", len(snapshot.workers))


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


_QUEUE_GAUGES: Sequence[tuple[str, str, Callable[[QueueOverview], float]]] = (
    ("jobqueue_queue_ready", "Jobs ready to run now.", lambda q: q.queued),
    ("jobqueue_queue_scheduled", "Jobs waiting for their run_at (delays, retries).",
     lambda q: q.scheduled),
    ("jobqueue_queue_running", "Jobs claimed by a worker.", lambda q: q.running),
    ("jobqueue_queue_dead", "Dead jobs not replayed (the dead-letter queue).", lambda q: q.dead),
    ("jobqueue_queue_oldest_ready_age_seconds",
     "How long the oldest ready job has been waiting (0 when none is).",
     lambda q: q.oldest_age or 0.0),
    ("jobqueue_queue_jobs_per_second", "Finished attempts per second over the last minute.",
     lambda q: q.per_second),
    ("jobqueue_queue_paused", "1 while the queue is paused.", lambda q: 1 if q.paused else 0),
    ("jobqueue_queue_workers", "Live workers serving the queue.", lambda q: q.workers),
)


def _queue_families(queues: list[QueueOverview]) -> Iterator[Metric]:
    for name, doc, value in _QUEUE_GAUGES:
        family = GaugeMetricFamily(name, doc, labels=["queue"])
        for q in queues:
            family.add_metric([q.queue], value(q))
        yield family
    # Only the queues that have a limit: "no limit" is not a number to compare with.
    limit = GaugeMetricFamily("jobqueue_queue_max_ready", "The queue's backpressure limit "
                              "(alert on jobqueue_queue_ready >= it).", labels=["queue"])
    full = GaugeMetricFamily("jobqueue_queue_full", "1 while the queue holds max_ready ready "
                             "jobs or more: enqueue warns (or raises QueueFull).",
                             labels=["queue"])
    for q in queues:
        if q.max_ready is not None:
            limit.add_metric([q.queue], q.max_ready)
            full.add_metric([q.queue], 1 if q.queued >= q.max_ready else 0)
    yield limit
    yield full
