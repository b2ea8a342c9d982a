"""What one attempt of a job came to, as a value: the :class:`Outcome`.

The executor turns each attempt into exactly one ``Outcome``; the completer
persists it (in a batch with others) and only then tells the observers (logs,
metrics), so every outcome is written once and reported once, and what is
reported is what the database holds.

The shape of an attempt's error record, one element of a job's ``errors``
array, is :class:`ErrorEntry`. The leader's rescue and ``cancel`` build the
same shape in SQL (``fragment_error_entry`` in ``sql/queries.sql``), with the
type and message constants below.
"""

from __future__ import annotations

import json
import traceback
from dataclasses import dataclass
from datetime import datetime, timezone
from enum import Enum
from typing import NamedTuple

from jobqueue.rows import ClaimedJob

TRACEBACK_LIMIT = 8 * 1024
MESSAGE_LIMIT = 2 * 1024

#: The error type and message recorded for a job whose worker was lost.
WORKER_LOST = ("WorkerLost", "the worker running this job died or lost its lease")
#: ... and for a job cancelled while it was queued.
CANCELLED_QUEUED = ("Cancelled", "cancelled while queued")


class DeadReason(str, Enum):
    """Why a job is in ``dead_jobs`` (its ``reason`` column)."""

    EXHAUSTED = "exhausted"  # failed on its last attempt
    PERMANENT = "permanent"  # PermanentError, a dead_on type, or not a retry_on type
    TIMEOUT = "timeout"  # its last attempt timed out
    UNKNOWN_TASK = "unknown_task"  # no handler of that name in the worker
    CRASHED = "crashed"  # its worker died on its last attempt (set by the rescue)
    CANCELLED = "cancelled"  # an operator cancelled it
    DEPENDENCY_FAILED = "dependency_failed"  # a workflow node whose dependency died (in SQL)


class Kind(str, Enum):
    SUCCEEDED = "succeeded"
    RETRIED = "retried"  # back to queued, due after ``delay``
    DEAD = "dead"  # moved to dead_jobs with a reason
    RELEASED = "released"  # handed back unfinished (shutdown): the attempt does not count
    # Not written, but found: the job was no longer this worker's when its
    # outcome was to be written (its lease ran out while the worker was frozen or
    # cut off, and the fleet rescued it), so the write changed nothing.
    LEASE_LOST = "lease_lost"


@dataclass(frozen=True, slots=True)
class ErrorEntry:
    """One failed attempt, as stored in ``jobs.errors`` and ``dead_jobs.errors``."""

    at: str
    attempt: int
    worker: str | None
    type: str
    message: str
    traceback: str | None = None

    @classmethod
    def of(cls, attempt: int, worker: str, type_name: str, message: str,
           exc: BaseException | None = None) -> ErrorEntry:
        """The entry for ``attempt``; the traceback keeps its tail (where the error is)
        within a bounded size, so a job failing in a deep stack cannot bloat its row."""
        tb = None
        if exc is not None and exc.__traceback__ is not None:
            tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
            if len(tb) > TRACEBACK_LIMIT:
                tb = "...\n" + tb[-TRACEBACK_LIMIT:]
        return cls(at=datetime.now(timezone.utc).isoformat(), attempt=attempt, worker=worker,
                   type=type_name, message=message[:MESSAGE_LIMIT], traceback=tb)

    @classmethod
    def of_exception(cls, attempt: int, worker: str, exc: BaseException) -> ErrorEntry:
        return cls.of(attempt, worker, exception_name(exc), str(exc), exc)

    def to_json(self) -> str:
        return json.dumps({"at": self.at, "attempt": self.attempt, "worker": self.worker,
                           "type": self.type, "message": self.message,
                           "traceback": self.traceback})

    @property
    def first_line(self) -> str:
        text = self.message.strip()
        return text.splitlines()[0][:200] if text else ""


def exception_name(exc: BaseException) -> str:
    cls = type(exc)
    if cls.__module__ == "builtins":
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"


class Outcome(NamedTuple):
    """What an attempt of ``job`` came to (a tuple: one is made per job, on the hot path).

    ``duration`` is the handler's run time (None when no handler ran: an unknown
    task, a job cancelled before it started). ``delay`` is set for a retry,
    ``reason`` for a dead job, ``error`` for every failure. A lease-lost outcome
    keeps what the worker meant to write (``intended``) and who holds the job
    now, where the database still has it (``owner``).

    A success carries what its history row needs: the ``result`` (JSON text or
    None), how long to ``keep`` it (seconds; 0: no history) and the last
    ``progress``. ``committed`` marks one whose ack already committed with a
    transactional handler's writes: it is reported, never written again.
    """

    kind: Kind
    job: ClaimedJob
    duration: float | None = None
    delay: float = 0.0
    reason: DeadReason | None = None
    error: ErrorEntry | None = None
    intended: Kind | None = None
    owner: str | None = None
    result: str | None = None
    keep: float = 0.0
    progress: str | None = None
    committed: bool = False

    @classmethod
    def succeeded(cls, job: ClaimedJob, duration: float, result: str | None = None,
                  keep: float = 0.0, progress: str | None = None,
                  committed: bool = False) -> Outcome:
        return cls(Kind.SUCCEEDED, job, duration, result=result, keep=keep, progress=progress,
                   committed=committed)

    @classmethod
    def retry(cls, job: ClaimedJob, duration: float, delay: float,
              error: ErrorEntry) -> Outcome:
        return cls(Kind.RETRIED, job, duration, delay=delay, error=error)

    @classmethod
    def dead(cls, job: ClaimedJob, duration: float | None, reason: DeadReason,
             error: ErrorEntry | None) -> Outcome:
        return cls(Kind.DEAD, job, duration, reason=reason, error=error)

    @classmethod
    def released(cls, job: ClaimedJob, delay: float = 0.0) -> Outcome:
        """Handed back without counting the attempt; due again after ``delay`` seconds."""
        return cls(Kind.RELEASED, job, delay=delay)

    def lost(self, owner: str | None) -> Outcome:
        """This outcome, found not written: the lease was no longer this worker's."""
        intended = self.intended if self.kind is Kind.LEASE_LOST else self.kind
        return self._replace(kind=Kind.LEASE_LOST, intended=intended, owner=owner)
