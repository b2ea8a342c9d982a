"""JobQueueBackend: Django tasks enqueued in Django's own transaction, run by jobqueue.

The point of the backend is where the job is written: on the very psycopg
connection Django's ORM uses, so inside ``transaction.atomic()`` the job is
part of the block and exists if and only if the block commits. (A broker fed
from ``transaction.on_commit`` loses the job when the process dies between the
COMMIT and the publish; here there is nothing to publish.) Outside an atomic
block Django's connection is in autocommit and so is the enqueue.

Every Django task is one job of the generic jobqueue task ``django_task``, whose
args are ``{"path": <the task's module path>, "args": [...], "kwargs": {...}}``:
the worker imports the task by path and calls it, so every task of the project
runs without being registered twice. Results, errors and timings come from
jobqueue's own records (``app.job``), so ``get_result`` works from any process.
"""

from __future__ import annotations

import threading
from typing import Any

from psycopg.conninfo import make_conninfo

from jobqueue.app import JobQueue
from jobqueue.contrib.django.compat import (
    BaseTaskBackend,
    TaskContext,
    TaskError,
    TaskResult,
    TaskResultDoesNotExist,
    TaskResultStatus,
)
from jobqueue.errors import JobNotFound
from jobqueue.rows import JobInfo
from jobqueue.tasks import JobContext

#: The jobqueue task that runs every Django task.
RUNNER = "django_task"

#: jobqueue's job states as Django's result statuses. A job waiting out a retry's
#: backoff is queued again, so READY, as Django says of a task not yet started.
STATUSES = {"queued": "READY", "scheduled": "READY", "waiting": "READY",
            "running": "RUNNING", "succeeded": "SUCCESSFUL",
            "dead": "FAILED", "cancelled": "FAILED"}


def to_priority(django_priority: int) -> int:
    """Django's priority (-100..100, higher runs first) as jobqueue's (lower runs first)."""
    return -int(django_priority)


class JobQueueBackend(BaseTaskBackend):  # type: ignore[misc]
    """A ``TASKS`` backend. OPTIONS (all optional):

    - ``database``: the ``DATABASES`` alias to enqueue on (default ``"default"``);
    - ``schema``: jobqueue's schema (default: ``JOBQUEUE_SCHEMA`` or ``jobqueue``);
    - ``dsn``: where workers and ``get_result`` connect (default: that database);
    - ``max_attempts``: attempts before a failing task is FAILED (default: jobqueue's).
    """

    supports_defer = True
    supports_async_task = True
    supports_get_result = True
    supports_priority = True

    def __init__(self, alias: str, params: dict[str, Any]) -> None:
        super().__init__(alias, params)
        self.database: str = self.options.get("database", "default")
        self._app: JobQueue | None = None
        self._lock = threading.Lock()

    # -- the jobqueue app ---------------------------------------------------------------

    def _connection(self) -> Any:
        from django.core.exceptions import ImproperlyConfigured
        from django.db import connections

        if self.database not in connections:
            raise ImproperlyConfigured(
                f"TASKS[{self.alias!r}]: OPTIONS database {self.database!r} is not in DATABASES")
        connection = connections[self.database]
        if connection.vendor != "postgresql":
            raise ImproperlyConfigured(
                f"TASKS[{self.alias!r}]: jobqueue needs DATABASES[{self.database!r}] on "
                f"django.db.backends.postgresql, not {connection.settings_dict['ENGINE']}")
        from django.db.backends.postgresql.psycopg_any import is_psycopg3

        if not is_psycopg3:
            raise ImproperlyConfigured(
                f"TASKS[{self.alias!r}]: jobqueue needs psycopg 3 under Django, not psycopg2")
        return connection

    def _dsn(self) -> str:
        # Django's own connection parameters (search_path in "options" included),
        # without its Python-only ones (cursor factory, adapters context).
        params = self._connection().get_connection_params()
        return make_conninfo("", **{key: value for key, value in params.items()
                                if isinstance(value, (str, int)) and not isinstance(value, bool)})

    @property
    def app(self) -> JobQueue:
        """The backend's JobQueue, built on first use, with the ``django_task`` runner."""
        with self._lock:
            if self._app is None:
                app = JobQueue(self.options.get("dsn") or self._dsn(),
                               schema=self.options.get("schema"))
                app.task(name=RUNNER, pass_context=True,
                         max_attempts=self.options.get("max_attempts"))(self._run)
                self._app = app
            return self._app

    def _run(self, ctx: JobContext, path: str, args: list[Any],
             kwargs: dict[str, Any]) -> Any:
        from django.db import close_old_connections
        from django.utils.module_loading import import_string

        task = import_string(path)
        # As Django does around a request: a task must not inherit a connection
        # that broke or outlived CONN_MAX_AGE in this worker thread.
        close_old_connections()
        try:
            if task.takes_context:
                return task.call(TaskContext(task_result=self.get_result(str(ctx.id))),
                                 *args, **kwargs)
            return task.call(*args, **kwargs)
        finally:
            close_old_connections()

    # -- the django.tasks API -----------------------------------------------------------

    def enqueue(self, task: Any, args: Any, kwargs: Any) -> Any:
        self.validate_task(task)
        connection = self._connection()
        # The raw psycopg connection exists only once Django has connected; in
        # atomic() it is in Django's transaction, outside it in autocommit.
        connection.ensure_connection()
        options: dict[str, Any] = {"queue": task.queue_name,
                                   "priority": to_priority(task.priority)}
        if task.run_after is not None:
            options["run_at"] = task.run_after
        args, kwargs = list(args), dict(kwargs)
        job_id = self.app.enqueue(RUNNER, {"path": task.module_path, "args": args,
                                           "kwargs": kwargs},
                                  conn=connection.connection, **options)
        return TaskResult(
            task=task, id=str(job_id), status=TaskResultStatus.READY, enqueued_at=None,
            started_at=None, finished_at=None, last_attempted_at=None, args=args,
            kwargs=kwargs, backend=self.alias, errors=[], worker_ids=[])

    def get_result(self, result_id: str) -> Any:
        from django.utils.module_loading import import_string

        try:
            info = self.app.job(int(result_id))
        except (JobNotFound, ValueError):
            raise TaskResultDoesNotExist(result_id) from None
        if info.task != RUNNER:
            raise TaskResultDoesNotExist(f"{result_id} is not a Django task's job")
        try:
            task = import_string(info.args["path"])
        except ImportError:
            raise TaskResultDoesNotExist(
                f"{result_id}: its task {info.args['path']!r} cannot be imported") from None
        return self.to_result(task, info)

    def to_result(self, task: Any, info: JobInfo) -> Any:
        """A job's record as Django's TaskResult."""
        status = STATUSES[info.state]
        # A worker per attempt, as Django counts attempts (len(worker_ids)).
        workers = [str(e.get("worker") or "") for e in info.errors]
        if status in ("RUNNING", "SUCCESSFUL") and info.worker:
            workers.append(info.worker)
        result = TaskResult(
            task=task, id=str(info.id), status=TaskResultStatus[status],
            enqueued_at=info.created_at, started_at=info.started_at,
            finished_at=info.finished_at if info.finished else None,
            last_attempted_at=info.started_at, args=info.args.get("args", []),
            kwargs=info.args.get("kwargs", {}), backend=self.alias,
            errors=[TaskError(exception_class_path=_class_path(e),
                              traceback=str(e.get("traceback") or e.get("message") or ""))
                    for e in info.errors],
            worker_ids=workers)
        if status == "SUCCESSFUL":
            # TaskResult is frozen; Django's own backends set the value this way.
            object.__setattr__(result, "_return_value", info.result)
        return result


def _class_path(entry: dict[str, Any]) -> str:
    """The failed attempt's exception as a dotted path Django can import."""
    name = str(entry.get("type") or "Exception")
    return name if "." in name else f"builtins.{name}"
