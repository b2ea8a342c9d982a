"""The task registry: which handlers and schedules an app defines, and their defaults.

A :class:`Registry` is what a worker needs of an app (the handlers to call,
the schedules to fire) and what enqueue needs to fill in what a producer left
unset (queue, priority, max_attempts). It holds no connection and does no I/O.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, TypeVar

from jobqueue.config import (
    DEFAULT_HISTORY,
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_PAYLOAD_LIMIT,
    DEFAULT_PRIORITY,
    DEFAULT_QUEUE,
)
from jobqueue.cron import CronError, Schedule
from jobqueue.errors import DuplicateTaskError, UnknownTaskError
from jobqueue.payload import check_priority
from jobqueue.tasks import Retry, Task, TaskOptions

TaskRef = Task | str | Callable[..., Any]
T = TypeVar("T")


def _given(value: T | None, default: T) -> T:
    return default if value is None else value


def task_name(ref: TaskRef) -> str:
    """The name of a task given as a Task, its name, or its function."""
    if isinstance(ref, Task):
        return ref.name
    if isinstance(ref, str):
        return ref
    if callable(ref):
        return str(getattr(ref, "__name__", ref))
    raise TypeError(f"not a task: {ref!r}")


def history_seconds(history: timedelta | bool | float | None, default: float) -> float:
    """Retention in seconds: a timedelta (or seconds), False for none, None or True
    for ``default``."""
    if history is None or history is True:
        return default
    if history is False:
        return 0.0
    if isinstance(history, timedelta):
        return history.total_seconds()
    if isinstance(history, (int, float)):
        return float(history)
    raise TypeError(f"history must be a timedelta or False, got {history!r}")


@dataclass(frozen=True)
class Attempts:
    """A worker's max_attempts for the jobs enqueued without one: per task where
    its declaration differs from the app's default, else that default."""

    by_task: dict[str, int] = field(default_factory=dict)
    default: int = DEFAULT_MAX_ATTEMPTS


@dataclass
class Registry:
    """Tasks and schedules by name, with the app-wide defaults for jobs."""

    default_queue: str = DEFAULT_QUEUE
    default_max_attempts: int = DEFAULT_MAX_ATTEMPTS
    default_retry: Retry = field(default_factory=Retry)
    payload_limit: int = DEFAULT_PAYLOAD_LIMIT
    #: Seconds succeeded jobs stay in history unless their task says; 0 keeps none.
    default_history: float = DEFAULT_HISTORY
    tasks: dict[str, Task] = field(default_factory=dict)
    schedules: dict[str, Schedule] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def define(self, fn: Callable[..., Any], options: TaskOptions) -> Task:
        """Register ``fn`` as a task; what ``options`` leave unset comes from the app."""
        retry = options.get("retry")
        return self.add_task(Task(
            fn=fn, name=options.get("name") or fn.__name__,
            queue=options.get("queue") or self.default_queue,
            priority=check_priority(options.get("priority", DEFAULT_PRIORITY)),
            max_attempts=_given(options.get("max_attempts"), self.default_max_attempts),
            timeout=options.get("timeout"), retry=retry or self.default_retry,
            pass_context=options.get("pass_context", False),
            keep=history_seconds(options.get("history"), self.default_history),
            result=options.get("result", True),
            transactional=options.get("transactional", False),
            executor=options.get("executor") or "thread",
            version=options.get("version", 1), upgrade=dict(options.get("upgrade") or {})))

    def add_task(self, task: Task) -> Task:
        with self._lock:
            if task.name in self.tasks:
                raise DuplicateTaskError(f"a task named {task.name!r} is already registered")
            self.tasks[task.name] = task
        return task

    def add_schedule(self, schedule: Schedule) -> Schedule:
        with self._lock:
            if schedule.name in self.schedules:
                raise CronError(f"a schedule named {schedule.name!r} is already defined")
            self.schedules[schedule.name] = schedule
        return schedule

    def get(self, ref: TaskRef) -> Task:
        name = task_name(ref)
        try:
            return self.tasks[name]
        except KeyError:
            raise UnknownTaskError(
                f"unknown task {name!r} (registered: {', '.join(sorted(self.tasks)) or 'none'}); "
                "pass strict=False to enqueue for a task this process does not import"
            ) from None

    def resolve(self, ref: TaskRef, strict: bool) -> tuple[str, Task | None]:
        """The task's name, and its declaration where this app has one.

        ``strict`` refuses a name this app does not define (UnknownTaskError).
        """
        name = task_name(ref)
        task = self.tasks.get(name)
        if task is None and strict:
            self.get(name)  # raises UnknownTaskError with the message
        return name, task

    def attempts(self) -> Attempts:
        d = self.default_max_attempts
        return Attempts({n: t.max_attempts for n, t in self.tasks.items() if t.max_attempts != d},
                        d)

    def version(self, ref: TaskRef) -> int:
        """The payload version a job of ``ref`` is enqueued for: the declared one, else 1."""
        task = self.tasks.get(task_name(ref))
        return 1 if task is None else task.version

    def job_defaults(self, ref: TaskRef) -> tuple[str, int, int]:
        """Queue, priority and max_attempts of a job of ``ref`` that sets none of them."""
        task = self.tasks.get(task_name(ref))
        if task is None:
            return self.default_queue, 0, self.default_max_attempts
        return task.queue, task.priority, task.max_attempts
