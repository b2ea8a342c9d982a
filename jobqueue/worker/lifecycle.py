"""What a job's life looks like from outside: lifecycle log events and metrics.

The executor calls :class:`Lifecycle` when a job starts and when its outcome
is known. Each call writes one structured event (``job.started``,
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

from jobqueue.enqueue import current_correlation_id
from jobqueue.metrics import WorkerMetrics
from jobqueue.worker.jobs import ClaimedJob, exception_name


class Lifecycle:
    def __init__(self, log: Any, metrics: WorkerMetrics | None = None) -> None:
        self.log = log
        self.metrics = metrics

    def started(self, job: ClaimedJob) -> float:
        """Bind the job's context and record its start; the start time for :meth:`finished`."""
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

    def succeeded(self, job: ClaimedJob, started: float) -> None:
        duration = time.monotonic() - started
        self.log.debug("job.succeeded", job_id=job.id, task=job.task, queue=job.queue,
                       attempt=job.attempts, duration=round(duration, 6),
                       correlation_id=job.correlation_id)
        if self.metrics is not None:
            self.metrics.job_finished(job, "succeeded", duration)

    def retrying(self, job: ClaimedJob, started: float, exc: BaseException,
                 delay: float) -> None:
        duration = time.monotonic() - started
        self.log.info("job.retrying", job_id=job.id, task=job.task, queue=job.queue,
                      attempt=job.attempts, max_attempts=job.max_attempts,
                      duration=round(duration, 6), error=exception_name(exc),
                      message=_first_line(exc), delay=round(delay, 3),
                      correlation_id=job.correlation_id)
        if self.metrics is not None:
            self.metrics.job_finished(job, "retried", duration)

    def dead(self, job: ClaimedJob, started: float | None, reason: str,
             exc: BaseException | None = None) -> None:
        """A job that will not run again; ``started`` is None if no handler ran."""
        duration = None if started is None else time.monotonic() - started
        self.log.warning("job.dead", job_id=job.id, task=job.task, queue=job.queue,
                         attempt=job.attempts, max_attempts=job.max_attempts,
                         duration=None if duration is None else round(duration, 6),
                         reason=reason, error=None if exc is None else exception_name(exc),
                         message=None if exc is None else _first_line(exc),
                         correlation_id=job.correlation_id)
        if self.metrics is not None:
            self.metrics.job_finished(job, "dead", duration)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else ""
