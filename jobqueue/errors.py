"""The exception tree of jobqueue.

Two families: :class:`JobQueueError` is what jobqueue raises at its caller
(bad input, bad configuration, an unreachable or unmigrated database), and
the handler-side signals :class:`PermanentError` and :class:`RetryAfter` are
what a task raises to steer its own failure policy.
"""

from __future__ import annotations


class JobQueueError(Exception):
    """Base of every error jobqueue raises at its caller."""


class ConfigError(JobQueueError):
    """A setting is missing or malformed (DSN, schema name, app path...)."""


class PayloadError(JobQueueError, ValueError):
    """Job args are not a JSON object, not serializable, or too large.

    Raised before any SQL is sent, so the caller's transaction stays usable.
    """


class UnknownTaskError(JobQueueError, LookupError):
    """A task name that this app has not registered (enqueue with strict=True)."""


class DuplicateTaskError(JobQueueError):
    """Two tasks registered under one name in one app."""


class DuplicateJobError(JobQueueError):
    """A live job (queued or running) already holds this ``unique_key``.

    Raised by enqueue with ``raise_on_duplicate=True``; ``job_id`` is the
    existing job's id. Nothing was sent that failed, so the caller's
    transaction stays usable.
    """

    def __init__(self, unique_key: str, job_id: int) -> None:
        super().__init__(f"a live job already has unique_key {unique_key!r}: job {job_id}")
        self.unique_key = unique_key
        self.job_id = job_id


class QueueFull(JobQueueError):
    """The queue already holds ``max_ready`` ready jobs and rejects more
    (``app.queues.set_limits(queue, max_ready=N, reject_when_full=True)``).

    Raised before the insert is sent, so nothing of the batch was enqueued and
    the caller's transaction stays usable: answer your own caller (an HTTP 503
    or 429), retry later, or enqueue elsewhere. ``ready`` is what the check
    counted, which stops counting at ``max_ready``.
    """

    def __init__(self, queue: str, max_ready: int, ready: int) -> None:
        super().__init__(f"queue {queue!r} is full: {ready} jobs ready, max_ready is "
                         f"{max_ready}; nothing was enqueued")
        self.queue = queue
        self.max_ready = max_ready
        self.ready = ready


class DatabaseError(JobQueueError):
    """The database could not be reached or refused the operation."""


class SchemaNotMigratedError(DatabaseError):
    """The jobqueue tables are missing: ``jobqueue migrate`` has not been run."""


class PrivilegeError(DatabaseError):
    """The role lacks a privilege on jobqueue's tables (see ``jobqueue migrate --grant-*``)."""


class UnsupportedConnectionError(JobQueueError, TypeError):
    """``conn=`` is not a connection kind that jobqueue can enqueue through."""


class JobNotFound(JobQueueError, LookupError):
    """No job of that id: jobqueue never had it, or its history was pruned (or its
    task keeps none)."""

    def __init__(self, job_id: int, detail: str = "") -> None:
        super().__init__(detail or f"no job {job_id}: never enqueued here, or it succeeded "
                                   "and its history was pruned (or its task keeps none)")
        self.job_id = job_id


class WorkflowNotFound(JobQueueError, LookupError):
    """No workflow of that id here."""

    def __init__(self, workflow_id: int) -> None:
        super().__init__(f"no workflow {workflow_id}")
        self.workflow_id = workflow_id


class JobFailed(JobQueueError):
    """The job ended dead (``reason``: exhausted, permanent, timeout, crashed, cancelled,
    ...); ``error`` is its last error's type and message, ``errors`` every attempt's."""

    def __init__(self, job_id: int, reason: str, error: str | None,
                 errors: list[dict[str, object]] | None = None) -> None:
        super().__init__(f"job {job_id} is dead ({reason})" + (f": {error}" if error else ""))
        self.job_id = job_id
        self.reason = reason
        self.error = error
        self.errors = errors or []


class LeaseLostError(JobQueueError):
    """A transactional handler's ack found the job no longer this attempt's (rescued,
    cancelled or claimed elsewhere): its transaction was rolled back."""


class PermanentError(Exception):
    """Raised by a handler: do not retry, move the job to dead_jobs at once."""


class RetryAfter(Exception):
    """Raised by a handler: retry after ``seconds`` instead of the backoff delay.

    The attempt still counts: a job out of attempts is dead all the same.
    """

    def __init__(self, seconds: float, message: str = "") -> None:
        if seconds < 0:
            raise ValueError("RetryAfter needs a delay >= 0")
        super().__init__(message or f"retry requested after {seconds}s")
        self.seconds = float(seconds)


class ResultError(PermanentError):
    """A handler returned what cannot be stored as its job's result (not JSON, too
    large): the attempt fails for good, since running it again would return the
    same. Tasks that return what they need not keep declare ``result=False``."""
