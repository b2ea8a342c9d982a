"""Tasks and their failure policy.

A :class:`Task` is a registered handler plus its defaults (queue, priority,
attempts, timeout) and its :class:`Retry` policy. :class:`JobContext` is what a
handler that asks for it (``pass_context=True``) receives about its job.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import math
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from enum import Enum
from typing import Any, TypedDict

from jobqueue.config import DEFAULT_MAX_ATTEMPTS, DEFAULT_PRIORITY
from jobqueue.errors import PermanentError, RetryAfter
from jobqueue.outcome import DeadReason, ErrorEntry, Outcome
from jobqueue.rows import ClaimedJob

#: Where a sync handler may run (TaskOptions.executor); async ones run on the loop.
EXECUTORS = ("thread", "process")


class Decision(Enum):
    RETRY = "retry"
    DEAD = "dead"


@dataclass(frozen=True)
class Retry:
    """When and how soon to retry a failed attempt.

    The delay before retry number *n* (n = 1 after the first failure) is
    ``min(cap, base * 2 ** (n - 1))`` seconds; with ``jitter`` (full jitter) it
    is drawn uniformly from ``[0, that]``, which spreads a burst of failures
    instead of retrying them in lockstep.

    ``retry_on`` lists the exception types worth retrying (default: any
    ``Exception``); ``dead_on`` lists types that dead-letter at once and wins
    over ``retry_on``. :class:`jobqueue.PermanentError` always dead-letters.
    """

    base: float = 1.0
    cap: float = 300.0
    jitter: bool = True
    retry_on: tuple[type[BaseException], ...] = (Exception,)
    dead_on: tuple[type[BaseException], ...] = ()

    def __post_init__(self) -> None:
        if self.base < 0 or self.cap < 0:
            raise ValueError("Retry base and cap must be >= 0")

    def backoff(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        exp = max(attempt, 1) - 1
        # base * 2 ** exp, exactly (ldexp); past the float range it is above
        # any cap. (A shortcut to the cap for large attempts would be wrong for
        # base=0, which must stay 0.)
        try:
            ceiling = min(self.cap, math.ldexp(self.base, exp))
        except OverflowError:
            ceiling = self.cap
        if not self.jitter:
            return ceiling
        return (rng or random).uniform(0.0, ceiling)

    def decide(self, exc: BaseException, attempt: int,
               max_attempts: int) -> tuple[Decision, DeadReason | None]:
        """Retry or dead-letter after ``exc`` on ``attempt``; with a reason when dead."""
        if isinstance(exc, (PermanentError, *self.dead_on)):
            return Decision.DEAD, DeadReason.PERMANENT
        if not isinstance(exc, (RetryAfter, asyncio.TimeoutError, TimeoutError)) and not isinstance(
            exc, self.retry_on
        ):
            return Decision.DEAD, DeadReason.PERMANENT
        if attempt >= max_attempts:
            timed_out = isinstance(exc, (asyncio.TimeoutError, TimeoutError))
            return Decision.DEAD, DeadReason.TIMEOUT if timed_out else DeadReason.EXHAUSTED
        return Decision.RETRY, None

    def outcome(self, job: ClaimedJob, exc: BaseException, duration: float,
                worker_id: str) -> Outcome:
        """What the failed attempt of ``job`` comes to: a retry after the backoff, or dead."""
        decision, reason = self.decide(exc, job.attempts, job.max_attempts)
        error = ErrorEntry.of_exception(job.attempts, worker_id, exc)
        if decision is Decision.RETRY:
            return Outcome.retry(job, duration, self.delay_for(exc, job.attempts), error)
        assert reason is not None
        return Outcome.dead(job, duration, reason, error)

    def delay_for(self, exc: BaseException, attempt: int) -> float:
        if isinstance(exc, RetryAfter):
            return exc.seconds
        return self.backoff(attempt)


class TaskOptions(TypedDict, total=False):
    """What ``@app.task(...)`` takes; each unset option falls back to the app's default."""

    #: The task's name (default: the function's ``__name__``); unique in an app.
    name: str | None
    #: The queue its jobs go to unless enqueue says otherwise.
    queue: str | None
    #: Lower runs first.
    priority: int
    #: Attempts before a job is dead.
    max_attempts: int | None
    #: Seconds an attempt may run; a sync handler with one runs in a killable child.
    timeout: float | None
    #: When and how soon to retry (default: the app's ``default_retry``).
    retry: Retry | None
    #: Call the handler with a :class:`JobContext` first.
    pass_context: bool
    #: How long its succeeded jobs stay in history (default: the app's);
    #: ``False`` keeps none (``app.job`` then raises JobNotFound once it succeeded).
    history: timedelta | bool | None
    #: Keep the handler's return value as the job's result (default True).
    result: bool
    #: Run the handler in a transaction (``ctx.conn``) that commits with its ack.
    transactional: bool
    #: Where a sync handler runs: ``"thread"`` (default) or ``"process"`` (the
    #: worker's pool of child processes: CPU-bound work, crash isolation).
    executor: str | None
    #: The version of the task's args; each job records the one it was enqueued for.
    version: int
    #: ``{n: fn}`` turns args of version ``n`` into version ``n + 1`` (each a dict).
    upgrade: Mapping[int, Callable[[dict[str, Any]], dict[str, Any]]] | None


NOTE_LIMIT = 500


def progress_json(done: float, total: float | None, note: str | None) -> str:
    """``ctx.progress`` arguments as the JSON stored on the job; ValueError if bad."""
    for name, value in (("done", done), ("total", total)):
        if value is None and name == "total":
            continue
        if (not isinstance(value, (int, float)) or isinstance(value, bool)
                or not math.isfinite(value)):
            raise ValueError(f"progress {name} must be a finite number, got {value!r}")
    if note is not None and not isinstance(note, str):
        raise ValueError(f"progress note must be a string, got {type(note).__name__}")
    return json.dumps({"done": done, "total": total,
                       "note": None if note is None else note.replace("\x00", "")[:NOTE_LIMIT],
                       "at": time.time()}, separators=(",", ":"))


@dataclass
class JobContext:
    """What a handler knows about the job it runs (``@app.task(pass_context=True)``).

    ``conn`` is set for a transactional task: a psycopg connection (an
    ``AsyncConnection`` for async handlers) in the transaction that the worker
    commits together with the job's ack; never commit or roll it back yourself.
    """

    id: int
    task: str
    queue: str
    attempt: int
    max_attempts: int
    worker_id: str
    conn: Any = None
    #: For a workflow node: the results of the nodes it waited for, in order.
    parent_results: list[Any] = field(default_factory=list)
    _cancel: threading.Event = field(default_factory=threading.Event, repr=False)
    #: The last progress reported, as stored (JSON text), or None.
    last_progress: str | None = field(default=None, repr=False)
    _on_progress: Callable[[JobContext], None] | None = field(default=None, repr=False)
    #: Binds SQLAlchemy sessions to ``conn`` (set for transactional tasks).
    _orm: Any = field(default=None, repr=False)
    #: What closes those sessions, before the connection goes back to its pool.
    _closers: list[Callable[[], Any]] = field(default_factory=list, repr=False)

    @property
    def cancelled(self) -> bool:
        """True once the worker asks this job to stop (shutdown past its grace)."""
        return self._cancel.is_set()

    def session(self) -> Any:
        """A SQLAlchemy ``Session`` on ``conn``, for a sync transactional task.

        Its ``commit()`` only releases a savepoint: what it writes commits with
        the job's ack, or rolls back with the attempt. No need to close it.
        """
        if self._orm is None or self.conn is None:
            raise RuntimeError("ctx.session() needs a task declared with transactional=True")
        session, close = self._orm.bind(self.conn)
        self._closers.append(close)
        return session

    async def async_session(self) -> Any:
        """:meth:`session` for an async transactional task: an ``AsyncSession``."""
        if self._orm is None or self.conn is None:
            raise RuntimeError("ctx.async_session() needs a task declared with "
                               "transactional=True")
        session, close = await self._orm.abind(self.conn)
        self._closers.append(close)
        return session

    def progress(self, done: float, total: float | None = None, note: str | None = None) -> None:
        """Report how far the job is (``done`` of ``total``, with an optional note).

        Cheap to call as often as you like, from sync and async handlers: the
        worker writes the latest value at most a few times a second, and with
        the job's outcome.
        """
        self.last_progress = progress_json(done, total, note)
        if self._on_progress is not None:
            self._on_progress(self)


@dataclass
class Task:
    """A registered handler and its defaults."""

    fn: Callable[..., Any]
    name: str
    queue: str
    priority: int = DEFAULT_PRIORITY
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    timeout: float | None = None
    retry: Retry = field(default_factory=Retry)
    pass_context: bool = False
    #: Seconds its succeeded jobs stay in history; 0 keeps none.
    keep: float = 0.0
    result: bool = True
    transactional: bool = False
    #: "thread" or "process" (see TaskOptions.executor).
    executor: str = "thread"
    version: int = 1
    upgrade: Mapping[int, Callable[[dict[str, Any]], dict[str, Any]]] = field(
        default_factory=dict)

    def __post_init__(self) -> None:
        if self.executor not in EXECUTORS:
            raise ValueError(f"task {self.name!r}: executor must be one of "
                             f"{', '.join(map(repr, EXECUTORS))}, got {self.executor!r}")
        if self.executor == "process" and self.transactional:
            # Its transaction is a connection of the worker's pool, which a child
            # process cannot share.
            raise ValueError(f"task {self.name!r}: a transactional task cannot run in a "
                             "process (its transaction is the worker's connection)")
        if not isinstance(self.version, int) or isinstance(self.version, bool) \
                or self.version < 1:
            raise ValueError(f"task {self.name!r}: version must be an integer >= 1")
        for old, step in self.upgrade.items():
            if not isinstance(old, int) or not 1 <= old < self.version or not callable(step):
                raise ValueError(f"task {self.name!r}: upgrade maps a version from 1 to "
                                 f"{self.version - 1} to a function, got {old!r}: {step!r}")
        if self.max_attempts < 1:
            raise ValueError(f"task {self.name!r}: max_attempts must be >= 1")
        if self.timeout is not None and self.timeout <= 0:
            raise ValueError(f"task {self.name!r}: timeout must be > 0 seconds")
        if self.keep < 0:
            raise ValueError(f"task {self.name!r}: history must be >= 0")
        self.is_async = inspect.iscoroutinefunction(self.fn)

    def upgraded(self, args: dict[str, Any], version: int) -> dict[str, Any]:
        """``args`` of a job enqueued for ``version``, brought to this task's version
        one step at a time; PermanentError where a step is missing (no attempt
        could ever succeed)."""
        for old in range(version, self.version):
            step = self.upgrade.get(old)
            if step is None:
                raise PermanentError(f"task {self.name!r} has no upgrade from payload "
                                     f"version {old} to {old + 1}")
            args = step(dict(args))
            if not isinstance(args, dict):
                raise PermanentError(f"task {self.name!r}: upgrade from version {old} "
                                     f"returned {type(args).__name__}, not a dict")
        return args

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Calling a task runs its function directly, as a plain call (handy in tests)."""
        return self.fn(*args, **kwargs)
