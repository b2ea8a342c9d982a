"""JobQueue: the task registry, the enqueue API and the entry point of workers.

One :class:`JobQueue` is one jobqueue schema in one database. Producers use it
to enqueue (inside their own transaction when they pass ``conn=``); workers
load the same object to find the handlers of the tasks they claim.

It is a composition, not a hub: the :class:`~jobqueue.registry.Registry`
holds the tasks and schedules, the :class:`~jobqueue.db.store.Store` (sync)
and :class:`~jobqueue.db.store.AsyncStore` run every statement, ``dead`` and
``queues`` are admin objects over the Store, and a worker gets the registry
and the settings, never this object.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, overload

import psycopg
from typing_extensions import Unpack

from jobqueue import enqueue as building
from jobqueue import tracing
from jobqueue import workflow as flows
from jobqueue.backpressure import Backpressure
from jobqueue.config import (
    DEFAULT_CONCURRENCY,
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_HISTORY,
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_PAYLOAD_LIMIT,
    DEFAULT_QUEUE,
    Settings,
    resolve_dsn,
    resolve_listen_dsn,
    resolve_pooler,
    resolve_schema,
)
from jobqueue.cron import Schedule
from jobqueue.db import admin, jobs, workflows
from jobqueue.db import migrate as migrations
from jobqueue.db.statement import Procedure
from jobqueue.db.store import AsyncStore, Store
from jobqueue.db.store import resolve_dsn as connect_dsn
from jobqueue.dead import DeadJobs
from jobqueue.enqueue import EnqueueOptions, JobBatch, ManyOptions, log_enqueued
from jobqueue.errors import ConfigError, WorkflowNotFound
from jobqueue.payload import check_correlation_id
from jobqueue.protocol import control_channel, outcome_channel
from jobqueue.queues import QueueControls
from jobqueue.registry import Registry, TaskRef, history_seconds, task_name
from jobqueue.results import Results
from jobqueue.rows import (
    HistoryEntry,
    JobInfo,
    Progress,
    QueueOverview,
    RunningJob,
    WorkflowIds,
    WorkflowInfo,
    WorkflowNode,
    WorkflowSummary,
)
from jobqueue.tasks import Retry, Task, TaskOptions
from jobqueue.workflow import Signature, SigOptions

if TYPE_CHECKING:
    from jobqueue.worker import Worker, WorkerConfig

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")
Jobs = Iterable[tuple[TaskRef, Mapping[str, Any] | None]]


def _traced(batch: JobBatch) -> JobBatch:
    """``batch`` with the caller's trace context, when tracing is on and there is one."""
    context = tracing.current_context()
    return batch if context is None else replace(batch, trace_context=context)


class EnqueueObserver(Protocol):
    """What ``app.observers`` hold: told, after each enqueue's statement has run, of
    the connection it ran on (None: jobqueue's own, already committed). The inline
    mode of :mod:`jobqueue.testing` is one; with none an enqueue pays an empty loop."""

    def enqueued(self, conn: Any) -> None: ...

    async def enqueued_async(self, conn: Any) -> None: ...


class JobQueue:
    """A job queue living in ``schema`` of the database at ``dsn``.

    ``dsn`` defaults to ``$JOBQUEUE_DSN``, else the embedded Postgres (started
    on first use). Nothing connects until the first enqueue or worker start.
    Behind PgBouncer in transaction mode pass ``pooler="transaction"`` (or set
    ``$JOBQUEUE_POOLER``), and for workers ``listen_dsn=``, a direct connection
    for LISTEN (``$JOBQUEUE_LISTEN_DSN``; without it workers poll).

    ``history`` is how long succeeded jobs (and their results) stay in
    ``job_history``: a week unless given, ``False`` for none; tasks may say
    otherwise (``@app.task(history=...)``).
    """

    def __init__(
        self,
        dsn: str | None = None,
        *,
        schema: str | None = None,
        payload_limit: int = DEFAULT_PAYLOAD_LIMIT,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        default_queue: str = DEFAULT_QUEUE,
        default_max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        default_retry: Retry | None = None,
        pooler: str | None = None,
        listen_dsn: str | None = None,
        history: timedelta | bool | None = None,
    ) -> None:
        #: Told of every enqueue once its statement has run (see :class:`EnqueueObserver`).
        self.observers: list[EnqueueObserver] = []
        self.registry = Registry(default_queue=default_queue,
                                 default_max_attempts=default_max_attempts,
                                 default_retry=default_retry or Retry(),
                                 payload_limit=payload_limit,
                                 default_history=history_seconds(history, DEFAULT_HISTORY))
        self.settings = Settings(dsn=resolve_dsn(dsn), schema=resolve_schema(schema),
                                 payload_limit=payload_limit, connect_timeout=connect_timeout,
                                 pooler=resolve_pooler(pooler),
                                 listen_dsn=resolve_listen_dsn(listen_dsn))

    @property
    def settings(self) -> Settings:
        return self._settings

    @settings.setter
    def settings(self, value: Settings) -> None:
        # New settings (the CLI's --dsn/--schema over an app's own): new Stores.
        self._settings = value
        self.store = Store(value)
        self.astore = AsyncStore(value)
        self.dead = DeadJobs(self.store)
        #: Which queues have a max_ready (cached) and what went in over it.
        self.backpressure = Backpressure()
        self.queues = QueueControls(self.store, self.backpressure)
        self.results = Results(self.store, self.astore, value)

    def __repr__(self) -> str:
        return f"JobQueue(schema={self.schema!r}, tasks={sorted(self.tasks)})"

    # -- configuration ------------------------------------------------------------------

    @property
    def dsn(self) -> str:
        """The DSN in use; resolving it may start the embedded Postgres."""
        return connect_dsn(self.settings)

    @property
    def schema(self) -> str:
        return self.settings.schema

    @property
    def uses_embedded(self) -> bool:
        return self.settings.dsn is None

    @property
    def tasks(self) -> dict[str, Task]:
        return self.registry.tasks

    @property
    def schedules(self) -> dict[str, Schedule]:
        return self.registry.schedules

    @property
    def default_queue(self) -> str:
        return self.registry.default_queue

    # -- task registry ------------------------------------------------------------------

    @overload
    def task(self, fn: F, /) -> Task: ...

    @overload
    def task(self, fn: None = None, /, **options: Unpack[TaskOptions]) -> Callable[[F], Task]: ...

    def task(self, fn: Callable[..., Any] | None = None, /,
             **options: Unpack[TaskOptions]) -> Task | Callable[[F], Task]:
        """Register a handler: ``@app.task`` or ``@app.task(queue=..., max_attempts=...)``;
        the options are :class:`~jobqueue.tasks.TaskOptions`."""

        def register(func: Callable[..., Any]) -> Task:
            return self.registry.define(func, options)

        return register(fn) if fn is not None else register

    def get_task(self, ref: TaskRef) -> Task:
        return self.registry.get(ref)

    # -- periodic jobs ------------------------------------------------------------------

    def cron(
        self,
        name: str,
        expression: str,
        task: TaskRef,
        args: Mapping[str, Any] | None = None,
        *,
        overlap: str = "skip",
        timezone: str = "UTC",
        catch_up: int = 1,
        queue: str | None = None,
        priority: int | None = None,
    ) -> Schedule:
        """Run ``task`` with ``args`` on a cron schedule, one job per tick across the fleet.

        ``expression`` has 5 fields, or 6 with seconds first. ``overlap="skip"``
        does not enqueue a tick while the previous run is still queued or
        running; ``"allow"`` does. After downtime at most ``catch_up`` missed
        ticks fire (the most recent). Workers of this app fire the schedules;
        see the README's "Periodic jobs" for timezones and DST.
        """
        return self.registry.add_schedule(Schedule.build(
            name, expression, task_name(task), args, overlap=overlap, timezone=timezone,
            catch_up=catch_up, queue=queue, priority=priority,
            payload_limit=self.settings.payload_limit))

    # -- enqueue ------------------------------------------------------------------------

    def _batch(self, jobs_: Jobs, options: ManyOptions) -> building.JobBatch:
        return building.build(self.registry, self.schema, jobs_, options)

    def _one(self, task: TaskRef, args: Mapping[str, Any] | None,
             options: EnqueueOptions) -> building.JobBatch:
        return building.build(self.registry, self.schema, [(task, args)], options,
                              unique_key=options.get("unique_key"),
                              raise_on_duplicate=options.get("raise_on_duplicate", False))

    def enqueue(self, task: TaskRef, args: Mapping[str, Any] | None = None, *,
                conn: Any = None, **options: Unpack[EnqueueOptions]) -> int:
        """Enqueue one job and return its id.

        With ``conn`` the job is part of the caller's transaction: it exists
        if and only if the caller commits, and jobqueue never commits for them.
        Without ``conn`` jobqueue uses its own pooled connection and commits.
        The options are :class:`~jobqueue.enqueue.EnqueueOptions`.
        """
        ids = self._insert(self._one(task, args, options), conn)
        self._tell(conn)
        return ids[0]

    def enqueue_many(self, jobs_: Jobs, *, conn: Any = None,
                     **options: Unpack[ManyOptions]) -> list[int]:
        """Enqueue many ``(task, args)`` pairs in one statement; ids in input order.

        With ``lock`` all of them share the lock key: they run one at a time."""
        batch = self._batch(jobs_, options)
        if not len(batch):
            return []
        ids = self._insert(batch, conn)
        self._tell(conn)
        return ids

    async def enqueue_async(self, task: TaskRef, args: Mapping[str, Any] | None = None, *,
                            conn: Any = None, **options: Unpack[EnqueueOptions]) -> int:
        """:meth:`enqueue` for psycopg ``AsyncConnection`` and SQLAlchemy async sessions."""
        ids = await self._insert_async(self._one(task, args, options), conn)
        await self._tell_async(conn)
        return ids[0]

    async def enqueue_many_async(self, jobs_: Jobs, *, conn: Any = None,
                                 **options: Unpack[ManyOptions]) -> list[int]:
        batch = self._batch(jobs_, options)
        if not len(batch):
            return []
        ids = await self._insert_async(batch, conn)
        await self._tell_async(conn)
        return ids

    def _insert(self, batch: JobBatch, conn: Any) -> list[int]:
        work = self._guarded(batch.queues, jobs.insert(_traced(batch)))
        return log_enqueued(batch, self.store.run(work, conn))

    async def _insert_async(self, batch: JobBatch, conn: Any) -> list[int]:
        work = self._guarded(batch.queues, jobs.insert(_traced(batch)))
        return log_enqueued(batch, await self.astore.run(work, conn))

    def _guarded(self, queues: list[str], insert: Procedure[T]) -> Procedure[T]:
        """``insert`` behind the backpressure check of ``queues``, when one is due: an
        enqueue into queues without max_ready, while the cache is fresh, runs alone."""
        if not self.backpressure.due(queues):
            return insert
        return admin.backpressured(self.backpressure, self.schema, queues, insert)

    @property
    def over_limit_counts(self) -> dict[str, int]:
        """Jobs this process enqueued into a full queue whose max_ready warns, per queue
        (exported by :class:`jobqueue.metrics.EnqueueCollector`)."""
        return self.backpressure.counts

    def _tell(self, conn: Any) -> None:
        for observer in self.observers:
            observer.enqueued(conn)

    async def _tell_async(self, conn: Any) -> None:
        for observer in self.observers:
            await observer.enqueued_async(conn)

    # -- operations ---------------------------------------------------------------------

    def migrate(self) -> None:
        """Create or upgrade the jobqueue schema (idempotent)."""
        migrations.upgrade(self.dsn, self.schema)

    def grant(self, role: str, *, worker: bool = False, kind: str | None = None) -> None:
        """Grant an existing ``role`` what enqueue needs (a producer), with ``worker``
        what a worker needs, or with ``kind="results"`` what ``job()`` and ``result()``
        need; none of them may create, drop or truncate."""
        kind = kind or ("worker" if worker else "producer")
        if kind not in admin.GRANTS:
            raise ConfigError(f"unknown kind of rights {kind!r}: use one of "
                              f"{', '.join(admin.GRANTS)}")
        self.store.run(admin.grant(kind, role))

    def connect(self) -> psycopg.Connection[Any]:
        """A new, unpooled connection to this queue's database (the caller closes it)."""
        return self.store.connect()

    def cancel(self, job_id: int, *, conn: Any = None) -> str:
        """Cancel a job: ``"cancelled"`` (it was queued: now in dead_jobs with reason
        ``cancelled``), ``"cancelling"`` (it is running: its worker is asked to stop it;
        async handlers are cancelled, sync ones see ``ctx.cancelled``), or
        ``"not_found"`` (no such live job: finished, dead, or never existed)."""
        return self.store.run(jobs.cancel(job_id, control_channel(self.schema),
                                          outcome_channel(self.schema)), conn)

    # -- workflows ----------------------------------------------------------------------

    def sig(self, task: TaskRef, args: Mapping[str, Any] | None = None,
            **options: Unpack[SigOptions]) -> Signature:
        """A job not enqueued yet, for ``chain``, ``group`` and ``chord`` (validated now)."""
        return flows.signature(self.registry, task, args, options)

    def enqueue_workflow(self, canvas: flows.Canvas, *, conn: Any = None,
                         correlation_id: str | None = None) -> WorkflowIds:
        """Enqueue a whole workflow in one statement (in the caller's transaction with
        ``conn``): its id (``.id``) and its nodes' job ids in order (``.ids``)."""
        plan = flows.compile_canvas(canvas)
        found: WorkflowIds = self.store.run(self._guarded(
            [n.queue for n in plan.nodes], workflows.insert(
                plan, self.schema, check_correlation_id(correlation_id),
                tracing.current_context())), conn)
        self._tell(conn)
        return found

    async def enqueue_workflow_async(self, canvas: flows.Canvas, *, conn: Any = None,
                                     correlation_id: str | None = None) -> WorkflowIds:
        plan = flows.compile_canvas(canvas)
        found: WorkflowIds = await self.astore.run(self._guarded(
            [n.queue for n in plan.nodes], workflows.insert(
                plan, self.schema, check_correlation_id(correlation_id),
                tracing.current_context())), conn)
        await self._tell_async(conn)
        return found

    def workflow(self, workflow_id: int, *, conn: Any = None) -> WorkflowInfo:
        """Every node of a workflow: state, attempts, result or error, dependencies."""
        found: list[WorkflowNode] = self.store.run(workflows.nodes(workflow_id), conn)
        if not found:
            raise WorkflowNotFound(workflow_id)
        return WorkflowInfo(workflow_id, found)

    def workflows(self, *, limit: int = 50, conn: Any = None) -> list[WorkflowSummary]:
        """The newest workflows, with how many nodes are live, succeeded and dead."""
        found: list[WorkflowSummary] = self.store.run(workflows.newest(limit), conn)
        return found

    # -- results and history ------------------------------------------------------------

    def job(self, job_id: int, *, conn: Any = None) -> JobInfo:
        """Where job ``job_id`` is and what became of it: its state (queued, scheduled,
        running, succeeded, dead, cancelled), attempts, errors, result, progress and
        timings. JobNotFound for an id this queue never had, or whose history is gone."""
        return self.results.job(job_id, conn)

    async def job_async(self, job_id: int, *, conn: Any = None) -> JobInfo:
        return await self.results.job_async(job_id, conn)

    def result(self, job_id: int, *, timeout: float | None = None,
               on_progress: Callable[[Progress], Any] | None = None) -> Any:
        """Wait until the job ends and return its result (the handler's return value).

        Woken by NOTIFY when the job's ack commits (no polling). Raises JobFailed
        for a dead or cancelled job (its reason and last error), TimeoutError
        after ``timeout`` seconds, JobNotFound for an unknown id. ``on_progress``
        is called with each progress report seen meanwhile.
        """
        return self.results.wait(job_id, timeout, on_progress)

    async def result_async(self, job_id: int, *, timeout: float | None = None,
                           on_progress: Callable[[Progress], Any] | None = None) -> Any:
        """:meth:`result`, awaited."""
        return await self.results.wait_async(job_id, timeout, on_progress)

    def history(self, *, task: TaskRef | None = None, since: datetime | None = None,
                limit: int = 50, conn: Any = None) -> list[HistoryEntry]:
        """Succeeded jobs, newest first (of ``task``, finished at or after ``since``)."""
        return self.results.history(None if task is None else task_name(task), since, limit,
                                    conn)

    def running(self, *, limit: int = 20, conn: Any = None) -> list[RunningJob]:
        """Jobs running now (worker, start, progress), longest-running first."""
        return self.results.running(limit, conn)

    def stats(self, conn: Any = None) -> list[QueueOverview]:
        """Per queue: ready, scheduled, running and dead jobs, the oldest ready job's
        age, outcomes over the last minute, paused, and how many live workers serve it."""
        overview: list[QueueOverview] = self.store.run(admin.queue_overview(), conn)
        return overview

    def worker(self, config: WorkerConfig | None = None, **options: Any) -> Worker:
        """A worker for this app's tasks: ``config``, or a WorkerConfig of ``options``."""
        from jobqueue.worker import Worker, WorkerConfig

        if config is None:
            options.setdefault("queues", (self.default_queue,))
            config = WorkerConfig(**options)
        return Worker(self.settings, self.registry, config)

    def run_worker(self, queues: Iterable[str] | None = None, *,
                   concurrency: int = DEFAULT_CONCURRENCY,
                   burst: bool = False, **options: Any) -> None:
        """Run a worker in this process until SIGTERM/SIGINT (or, with burst, until idle)."""
        self.worker(queues=tuple(queues) if queues else (self.default_queue,),
                    concurrency=concurrency, burst=burst, **options).run()

    def close(self) -> None:
        """Close the producer pools (the caller's connections are never touched)."""
        self.store.close()
        self.astore.close()

    async def aclose(self) -> None:
        await self.astore.aclose()
        self.store.close()
