"""The observer of a job's life: lifecycle log events and metrics.

The executor calls :meth:`Lifecycle.started` when a handler starts; the
completer calls :meth:`Lifecycle.finished` with each :class:`~jobqueue.outcome.Outcome`
once it is written. Each call writes one structured event (``job.started``,
``job.succeeded``, ``job.retrying``, ``job.dead``) and, when the worker serves
metrics, updates its counters and histograms.

``started`` also binds the job's id, task and correlation id into structlog's
context variables for the job's own asyncio task, so whatever the handler logs
through structlog carries them; the executor copies that context into the
thread of a sync handler (``run_in_executor`` does not), and a forked handler
inherits it. A job enqueued from inside a handler inherits the correlation id.

The per-job events are the hot path: ``job.started`` and ``job.succeeded`` are
debug-level (a no-op method of the filtering logger unless debug is on), while
retries and dead jobs, which an operator wants to see, are info and warning.
"""

from __future__ import annotations

import time
from typing import Any

from structlog.contextvars import bind_contextvars

from jobqueue.metrics import WorkerMetrics
from jobqueue.outcome import Kind, Outcome
from jobqueue.payload import current_correlation_id
from jobqueue.rows import ClaimedJob


class Lifecycle:
    def __init__(self, log: Any, metrics: WorkerMetrics | None = None) -> None:
        self.log = log
        self.metrics = metrics

    def started(self, job: ClaimedJob) -> float:
        """Bind the job's context and record its start; the start time for durations."""
        correlation = job.correlation_id
        if correlation is None:
            bind_contextvars(job_id=job.id, task=job.task)
        else:
            bind_contextvars(job_id=job.id, task=job.task, correlation_id=correlation)
            current_correlation_id.set(correlation)
        self.log.debug("job.started", job_id=job.id, task=job.task, queue=job.queue,
                       attempt=job.attempts, correlation_id=correlation)
        if self.metrics is not None:
            self.metrics.job_started(job, time.time() - job.run_at.timestamp())
        return time.monotonic()

    def finished(self, outcome: Outcome) -> None:
        """One event (and metric) for an outcome that is now in the database."""
        job, error = outcome.job, outcome.error
        duration = None if outcome.duration is None else round(outcome.duration, 6)
        if outcome.kind is Kind.SUCCEEDED:
            # The hot path: a debug event (a no-op unless debug is on), no dict built.
            self.log.debug("job.succeeded", job_id=job.id, task=job.task, queue=job.queue,
                           attempt=job.attempts, duration=duration,
                           correlation_id=job.correlation_id)
            if self.metrics is not None:
                self.metrics.job_finished(job, "succeeded", outcome.duration)
            return
        common = {"job_id": job.id, "task": job.task, "queue": job.queue,
                  "attempt": job.attempts, "duration": duration,
                  "correlation_id": job.correlation_id}
        if outcome.kind is Kind.RETRIED:
            self.log.info("job.retrying", **common, max_attempts=job.max_attempts,
                          error=error.type if error else None,
                          message=error.first_line if error else "",
                          delay=round(outcome.delay, 3))
        elif outcome.kind is Kind.DEAD:
            self.log.warning("job.dead", **common, max_attempts=job.max_attempts,
                             reason=outcome.reason.value if outcome.reason else None,
                             error=error.type if error else None,
                             message=error.first_line if error else None)
        elif outcome.kind is Kind.LEASE_LOST:
            # What this worker did (or would have done) is not what happened to
            # the job: say so, once per job, loudly.
            self.log.warning("job.lease_lost", **common, ran=outcome.duration is not None,
                             intended=outcome.intended.value if outcome.intended else None,
                             owner=outcome.owner,
                             note="the lease ran out (worker frozen or cut off) and the job "
                                  "was rescued: its outcome here was not written")
        else:
            return  # released: not an outcome of the job, the worker handed it back
        if self.metrics is not None:
            self.metrics.job_finished(job, outcome.kind.value, outcome.duration)
