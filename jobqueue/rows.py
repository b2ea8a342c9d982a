"""Typed rows: what the Store's statements return, one class per row shape.

Rows are built *by column name* (:func:`jobqueue.db.statement.named_row`), never by position:
a statement's column list can be reordered, or grow, without silently moving
values into the wrong field. A column a class does not declare is an error at
once, in the test of that statement, not a wrong value later.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

# -- jobs --------------------------------------------------------------------------------


@dataclass(slots=True)
class ClaimedJob:
    """A job as the worker claimed it."""

    id: int
    queue: str
    task: str
    args: dict[str, Any]
    attempts: int
    max_attempts: int
    priority: int
    run_at: datetime
    created_at: datetime
    lock_key: str | None = None
    correlation_id: str | None = None
    cancel_requested: bool = False  # cancelled while it waited for a retry
    workflow_id: int | None = None
    #: A workflow node's dependencies' results, in order (None for a plain job).
    parent_results: list[Any] | None = None
    #: What the producer's propagator wrote (jobqueue.tracing), or None.
    trace_context: dict[str, str] | None = None
    #: The dead job this one replays, if it is a replay.
    replay_of: int | None = None
    #: The payload version its args were enqueued for (@app.task(version=N)).
    version: int = 1


@dataclass(frozen=True, slots=True)
class JobId:
    id: int


@dataclass(frozen=True, slots=True)
class QueueName:
    queue: str


@dataclass(frozen=True, slots=True)
class WorkerLoad:
    worker: str
    running: int


@dataclass(frozen=True, slots=True)
class OutcomeMinute:
    """Outcomes of one minute, all queues (the dashboard's chart)."""

    minute: datetime
    succeeded: int
    retried: int
    dead: int


@dataclass(frozen=True, slots=True)
class ReservedIds:
    """Ids drawn for a COPY, and the jobs' shared run_at as this session prints it."""

    ids: list[int]
    run_at: str
    notified: int


@dataclass(frozen=True, slots=True)
class HeldJob:
    """A job whose lease a heartbeat extended, and whether an operator cancelled it."""

    id: int
    cancel_requested: bool


@dataclass(frozen=True, slots=True)
class RescuedJob:
    id: int
    queue: str


# -- queues ------------------------------------------------------------------------------


@dataclass(frozen=True)
class QueueSettings:
    """A queue's fleet-wide controls (a row of ``queues``)."""

    name: str
    paused: bool = False
    max_running: int | None = None
    rate_limit: int | None = None
    rate_period: float | None = None
    #: Backpressure: at most this many ready jobs before an enqueue pushes back ...
    max_ready: int | None = None
    #: ... by raising QueueFull (True) or by a warning and a counter (False).
    reject_when_full: bool = False

    @property
    def limited(self) -> bool:
        """Whether claims are limited (max_running, rate). ``max_ready`` is not a claim
        limit: it is checked by enqueue, never by the worker."""
        return self.max_running is not None or self.rate_limit is not None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


OPEN_QUEUE = QueueSettings(name="")


@dataclass(frozen=True, slots=True)
class QueueLoad:
    """A queue with a max_ready, and its ready jobs counted up to it (None: not counted,
    the enqueue that asked puts nothing in it)."""

    queue: str
    max_ready: int
    reject_when_full: bool
    ready: int | None


@dataclass(frozen=True, slots=True)
class QueueCapacity:
    name: str
    capacity: int


@dataclass(frozen=True)
class QueueOverview:
    """One queue as ``jobqueue stats`` shows it.

    ``queued`` is the number of jobs ready to run now (the name ``stats --json``
    has always used); ``*_1m`` count outcomes over the last 50 to 60 seconds
    (``span_seconds`` says exactly how long).
    """

    queue: str
    queued: int
    scheduled: int
    running: int
    dead: int
    oldest_age: float | None
    succeeded_1m: int
    retried_1m: int
    dead_1m: int
    span_seconds: float
    paused: bool
    workers: int
    #: Its backpressure limit (jobqueue queue limit --max-ready), if it has one.
    max_ready: int | None = None

    @property
    def per_second(self) -> float:
        """Finished attempts (succeeded, retried or dead) per second over the last minute."""
        done = self.succeeded_1m + self.retried_1m + self.dead_1m
        return done / self.span_seconds if self.span_seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "per_second": round(self.per_second, 3)}


# -- workers -----------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkerBeat:
    """One row of ``workers``: who it is and how long ago it last heartbeat."""

    id: str
    hostname: str
    pid: int
    queues: list[str]
    heartbeat_at: float  # epoch seconds
    age: float


# -- dead jobs ---------------------------------------------------------------------------


@dataclass(frozen=True)
class DeadJobSummary:
    id: int
    queue: str
    task: str
    reason: str
    attempts: int
    died_at: datetime
    last_error_type: str | None
    last_error: str | None
    replay_count: int
    replayed_at: datetime | None
    replayed_as: int | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class DeadJob:
    id: int
    queue: str
    task: str
    args: dict[str, Any]
    priority: int
    run_at: datetime
    attempts: int
    #: None: cancelled before a worker claimed it, with no max_attempts given.
    max_attempts: int | None
    unique_key: str | None
    cron_name: str | None
    replay_of: int | None
    created_at: datetime
    died_at: datetime
    reason: str
    errors: list[dict[str, Any]]
    replay_count: int
    replayed_at: datetime | None
    replayed_as: int | None
    #: The payload version its args were enqueued for; a replay keeps it.
    version: int = 1

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class ReplayedRow:
    """One row of a replay batch: a dead job and its new job (None where skipped)."""

    dead_id: int | None
    job_id: int | None
    picked: int
    last_id: int | None


# -- results and history -----------------------------------------------------------------

#: The states of a job, as JobInfo.state says them.
JOB_STATES = ("queued", "scheduled", "running", "succeeded", "dead", "cancelled",
              "waiting")  # waiting: a workflow node whose dependencies have not all succeeded


@dataclass(frozen=True)
class Progress:
    """What a handler last reported with ``ctx.progress``."""

    done: float
    total: float | None
    note: str | None
    at: datetime

    @classmethod
    def of(cls, value: dict[str, Any] | None) -> Progress | None:
        if not value:
            return None
        return cls(done=value.get("done", 0), total=value.get("total"), note=value.get("note"),
                   at=datetime.fromtimestamp(float(value.get("at") or 0), timezone.utc))

    @property
    def fraction(self) -> float | None:
        return self.done / self.total if self.total else None

    def as_dict(self) -> dict[str, Any]:
        return {"done": self.done, "total": self.total, "note": self.note,
                "at": _iso(self.at), "fraction": self.fraction}


@dataclass(frozen=True)
class JobInfo:
    """A job wherever it is now (``app.job(id)``): live, dead or in history.

    ``state`` is one of :data:`JOB_STATES`. ``errors`` holds every failed
    attempt (the shape of :class:`jobqueue.outcome.ErrorEntry`); ``result`` is
    the handler's return value once it succeeded; ``reason`` why it is dead.
    """

    id: int
    task: str
    queue: str
    state: str
    args: dict[str, Any]
    attempts: int
    max_attempts: int | None
    priority: int
    errors: list[dict[str, Any]]
    result: Any
    progress: dict[str, Any] | None
    correlation_id: str | None
    created_at: datetime
    run_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    worker: str | None
    reason: str | None
    replayed_as: int | None
    expires_at: datetime | None
    #: The workflow the job is a node of, if any.
    workflow_id: int | None = None
    #: The payload version its args were enqueued for (@app.task(version=N)).
    version: int = 1

    @property
    def finished(self) -> bool:
        return self.state in ("succeeded", "dead", "cancelled")

    @property
    def last_error(self) -> str | None:
        if not self.errors:
            return None
        last = self.errors[-1]
        return f"{last.get('type')}: {last.get('message')}"

    @property
    def report(self) -> Progress | None:
        """The progress as a value (``progress`` is the stored dict)."""
        return Progress.of(self.progress)

    @property
    def duration(self) -> float | None:
        return _between(self.started_at, self.finished_at)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for key in ("created_at", "run_at", "started_at", "finished_at", "expires_at"):
            out[key] = _iso(out[key])
        out["progress"] = None if self.report is None else self.report.as_dict()
        out["duration"] = self.duration
        return out


@dataclass(frozen=True)
class RunningJob:
    """A job running now, as ``stats`` (and the dashboard) list them."""

    id: int
    task: str
    queue: str
    worker: str
    attempts: int
    started_at: datetime | None
    progress: dict[str, Any] | None

    @property
    def report(self) -> Progress | None:
        return Progress.of(self.progress)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["started_at"] = _iso(self.started_at)
        out["progress"] = None if self.report is None else self.report.as_dict()
        return out


@dataclass(frozen=True)
class HistoryEntry:
    """One succeeded job, as ``jobqueue history list`` shows it."""

    id: int
    task: str
    queue: str
    attempts: int
    worker: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime
    has_result: bool
    correlation_id: str | None

    @property
    def duration(self) -> float | None:
        return _between(self.started_at, self.finished_at)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for key in ("created_at", "started_at", "finished_at"):
            out[key] = _iso(out[key])
        out["duration"] = self.duration
        return out


# -- workflows ---------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkflowIds:
    """What enqueue_workflow returns (the handle): the workflow's ``id`` and its nodes'
    job ids, in order (``ids``)."""

    id: int
    ids: list[int]


@dataclass(frozen=True)
class WorkflowNode:
    """One node of a workflow and where it is (``app.workflow(id).nodes``)."""

    id: int
    task: str
    queue: str
    #: waiting (for dependencies), queued, running, succeeded, dead or cancelled
    state: str
    attempts: int
    result: Any
    error: str | None
    reason: str | None
    depends_on: list[int]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class WorkflowInfo:
    """A workflow and every node of it (``app.workflow(id)``)."""

    id: int
    nodes: list[WorkflowNode]

    @property
    def state(self) -> str:
        """running (a node is live), failed (a node is dead), else succeeded."""
        states = {n.state for n in self.nodes}
        if states & {"waiting", "queued", "running", "scheduled"}:
            return "running"
        return "failed" if states & {"dead", "cancelled"} else "succeeded"

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "state": self.state, "nodes": [n.as_dict() for n in self.nodes]}


@dataclass(frozen=True)
class WorkflowSummary:
    id: int
    nodes: int
    created_at: datetime
    correlation_id: str | None
    live: int
    succeeded: int
    dead: int

    @property
    def state(self) -> str:
        if self.live:
            return "running"
        return "failed" if self.dead else "succeeded"

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "created_at": _iso(self.created_at), "state": self.state}


# -- cron --------------------------------------------------------------------------------


@dataclass(frozen=True)
class StoredSchedule:
    """A row of the ``cron`` table, as ``jobqueue cron list`` shows it."""

    name: str
    expression: str
    timezone: str
    task: str
    queue: str
    overlap: str
    priority: int
    catch_up: int
    last_fire_at: datetime | None
    next_fire_at: datetime | None

    def local(self, instant: datetime | None) -> datetime | None:
        """``instant`` on the schedule's own clock (UTC if its zone is unknown here)."""
        if instant is None:
            return None
        try:
            return instant.astimezone(ZoneInfo(self.timezone))
        except (ZoneInfoNotFoundError, ValueError):
            return instant.astimezone(timezone.utc)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "expression": self.expression, "timezone": self.timezone,
            "task": self.task, "queue": self.queue, "overlap": self.overlap,
            "priority": self.priority, "catch_up": self.catch_up,
            "last_fire_at": _iso(self.last_fire_at), "next_fire_at": _iso(self.next_fire_at),
        }


def _between(start: datetime | None, end: datetime | None) -> float | None:
    """Seconds from ``start`` to ``end``, if both are known."""
    if start is None or end is None:
        return None
    return (end - start).total_seconds()


def _iso(instant: datetime | None) -> str | None:
    return instant.astimezone(timezone.utc).isoformat() if instant is not None else None
