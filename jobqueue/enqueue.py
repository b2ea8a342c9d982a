"""Enqueue, the pure half: validate jobs and turn them into one batch of rows.

Everything that can be wrong with a job because of its caller (args that are
not a JSON object, too large, an unknown task, a bad delay) is checked here in
Python *before* any SQL is sent: a failed statement would abort the caller's
transaction and take their business writes down with it.

There is one path: :func:`build` turns any number of ``(task, args)`` pairs and
one set of :class:`EnqueueOptions` into a :class:`JobBatch`, which the Store
inserts (:func:`jobqueue.db.jobs.insert`). ``enqueue``, ``enqueue_many`` and
their async twins are thin shells over the two.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypedDict

import structlog

from jobqueue.errors import PayloadError
from jobqueue.log import get_logger
from jobqueue.payload import (
    check_correlation_id,
    check_lock_key,
    check_max_attempts,
    check_priority,
    check_run_at,
    check_version,
    delay_seconds,
    encode_args,
)
from jobqueue.protocol import job_channel
from jobqueue.registry import Registry, TaskRef, task_name


class ManyOptions(TypedDict, total=False):
    """What ``enqueue_many`` takes besides the jobs; the same for all of them."""

    #: The queue (default: the task's, else the app's default queue).
    queue: str | None
    #: Lower runs first (default: the task's, else 0).
    priority: int | None
    #: When the job becomes due (timezone-aware); or ``delay`` seconds from now.
    run_at: datetime | None
    delay: float | timedelta | None
    #: Attempts before the job is dead (default: what the worker that claims it
    #: declares for the task, else that worker app's default).
    max_attempts: int | None
    #: Refuse a task name this app has not registered (False for by-name producers).
    strict: bool
    #: Follows the job (and the jobs it enqueues) through logs; default: the running job's.
    correlation_id: str | None
    #: Jobs sharing a lock key never run at the same time, anywhere in the fleet.
    lock: str | None
    #: The payload version the args are written for (default: the task's declared
    #: ``version``, else 1); a worker upgrades older ones before calling the handler.
    version: int | None


class EnqueueOptions(ManyOptions, total=False):
    """What ``enqueue`` takes: :class:`ManyOptions`, and a unique key."""

    #: While a live job (queued or running) holds the key, its id is returned ...
    unique_key: str | None
    #: ... or, with this, DuplicateJobError is raised.
    raise_on_duplicate: bool


@dataclass(frozen=True)
class JobBatch:
    """Validated jobs, column by column, ready for the insert statements."""

    tasks: list[str]
    queues: list[str]
    args: list[str]
    priorities: list[int]
    #: None: left to the worker's declaration of the task (see the claim).
    max_attempts: list[int | None]
    run_at: datetime | None
    delay: float
    correlation_id: str | None
    lock_key: str | None
    schema: str
    unique_key: str | None = None
    raise_on_duplicate: bool = False
    #: The producer's trace context as JSON (jobqueue.tracing), shared by the batch.
    trace_context: str | None = None
    #: Each job's payload version (see ManyOptions.version).
    versions: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.tasks)

    def shared(self) -> dict[str, Any]:
        return {"run_at": self.run_at, "delay": self.delay,
                "correlation_id": self.correlation_id, "lock_key": self.lock_key,
                "trace_context": self.trace_context,
                "channel": job_channel(self.schema)}

    def one(self) -> dict[str, Any]:
        """The parameters of ``insert_job`` (a batch of one)."""
        return {"task": self.tasks[0], "queue": self.queues[0], "args": self.args[0],
                "priority": self.priorities[0], "max_attempts": self.max_attempts[0],
                "version": self.versions[0], "unique_key": self.unique_key, **self.shared()}

    def many(self) -> dict[str, Any]:
        """The parameters of ``insert_jobs``."""
        return {"tasks": self.tasks, "queues": self.queues, "args": self.args,
                "priorities": self.priorities, "max_attempts": self.max_attempts,
                "versions": self.versions, **self.shared()}


def build(registry: Registry, schema: str,
          jobs: Iterable[tuple[TaskRef, Mapping[str, Any] | None]], options: ManyOptions,
          *, unique_key: str | None = None, raise_on_duplicate: bool = False) -> JobBatch:
    """Validate ``jobs`` with ``options`` into one batch; PayloadError or
    UnknownTaskError on the first bad one, before anything touches the database."""
    run_at, delay = options.get("run_at"), options.get("delay")
    if run_at is not None and delay is not None:
        raise PayloadError("pass run_at or delay, not both")
    strict = options.get("strict", True)
    # The options are the same for every job, so what follows from them and the
    # task (queue, priority, max_attempts, and every check of those) is worked
    # out once per task; per job only its args are encoded.
    per_task: dict[str, tuple[str, int, int | None, int]] = {}
    limit = registry.payload_limit
    batch = JobBatch(tasks=[], queues=[], args=[], priorities=[], max_attempts=[],
                     run_at=check_run_at(run_at), delay=delay_seconds(delay),
                     correlation_id=check_correlation_id(options.get("correlation_id")),
                     lock_key=check_lock_key(options.get("lock")), schema=schema,
                     unique_key=unique_key, raise_on_duplicate=raise_on_duplicate)
    for ref, args in jobs:
        name = task_name(ref)
        resolved = per_task.get(name)
        if resolved is None:
            resolved = per_task[name] = _task_options(registry, name, strict, options)
        batch.args.append(encode_args(args, limit))
        batch.tasks.append(name)
        batch.queues.append(resolved[0])
        batch.priorities.append(resolved[1])
        batch.max_attempts.append(resolved[2])
        batch.versions.append(resolved[3])
    return batch


def _task_options(registry: Registry, name: str, strict: bool,
                  options: ManyOptions) -> tuple[str, int, int | None, int]:
    # Queue and priority place the job, so they are decided here, with this
    # app's declaration where it has one. max_attempts only matters once the job
    # runs: unless the caller gives it, it is left to the worker that claims
    # the job, whose declaration of the task is the one that counts (a
    # producer enqueueing by name may not import the task at all).
    registry.resolve(name, strict)
    queue, priority, _ = registry.job_defaults(name)
    given_priority, given_attempts = options.get("priority"), options.get("max_attempts")
    version = options.get("version")
    return (options.get("queue") or queue,
            check_priority(given_priority if given_priority is not None else priority),
            None if given_attempts is None else check_max_attempts(given_attempts),
            registry.version(name) if version is None else check_version(version))


_enqueue_log: Any = None


def log_enqueued(batch: JobBatch, ids: list[int]) -> list[int]:
    """``job.enqueued`` at debug level, one event per job; returns ``ids``.

    Only once structlog is configured (by the host application or a jobqueue
    process): unconfigured structlog prints every level, and a library must not
    write a line per enqueue to an application's output. With debug disabled
    the filtering logger's ``debug`` is a no-op, so the hot path pays a lookup.
    """
    global _enqueue_log
    if _enqueue_log is None:
        if not structlog.is_configured():
            return ids
        _enqueue_log = get_logger("jobqueue.enqueue")
    enabled = getattr(_enqueue_log, "is_enabled_for", None)
    if enabled is not None and not enabled(logging.DEBUG):
        return ids  # skip building the events of a bulk enqueue nobody will see
    debug = _enqueue_log.debug
    for i, job_id in enumerate(ids):
        debug("job.enqueued", job_id=job_id, task=batch.tasks[i], queue=batch.queues[i],
              correlation_id=batch.correlation_id)
    return ids
