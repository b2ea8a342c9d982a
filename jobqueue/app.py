"""JobQueue: the task registry, the enqueue API and the entry point of workers.

One :class:`JobQueue` is one jobqueue schema in one database. Producers use it
to enqueue (inside their own transaction when they pass ``conn=``); workers
load the same object to find the handlers of the tasks they claim.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any, TypeVar, overload

import psycopg
from psycopg_pool import AsyncConnectionPool, ConnectionPool, PoolTimeout

from jobqueue import embedded, enqueue
from jobqueue.config import (
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_PAYLOAD_LIMIT,
    DEFAULT_QUEUE,
    Settings,
    resolve_dsn,
    resolve_schema,
)
from jobqueue.cron import CronError, Schedule
from jobqueue.dead import DeadJobs
from jobqueue.errors import DuplicateTaskError, PayloadError, UnknownTaskError
from jobqueue.overview import QueueOverview, queue_overview
from jobqueue.queues import QueueControls
from jobqueue.tasks import Retry, Task

F = TypeVar("F", bound=Callable[..., Any])
R = TypeVar("R")
TaskRef = Task | str | Callable[..., Any]


class JobQueue:
    """A job queue living in ``schema`` of the database at ``dsn``.

    ``dsn`` defaults to ``$JOBQUEUE_DSN``, else the embedded Postgres (started
    on first use). Nothing connects until the first enqueue or worker start.
    """

    def __init__(
        self,
        dsn: str | None = None,
        *,
        schema: str | None = None,
        payload_limit: int = DEFAULT_PAYLOAD_LIMIT,
        connect_timeout: float = 5.0,
        default_queue: str = DEFAULT_QUEUE,
        default_max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        default_retry: Retry | None = None,
    ) -> None:
        self.settings = Settings(
            dsn=resolve_dsn(dsn),
            schema=resolve_schema(schema),
            payload_limit=payload_limit,
            connect_timeout=connect_timeout,
        )
        self.default_queue = default_queue
        self.default_max_attempts = default_max_attempts
        self.default_retry = default_retry or Retry()
        self.tasks: dict[str, Task] = {}
        self._lock = threading.Lock()
        self._pool: ConnectionPool[Any] | None = None
        self._apool: AsyncConnectionPool[Any] | None = None
        self._apool_loop: asyncio.AbstractEventLoop | None = None
        self._schema_ok = False
        self.dead = DeadJobs(self)
        self.schedules: dict[str, Schedule] = {}
        self.queues = QueueControls(self)

    def __repr__(self) -> str:
        return f"JobQueue(schema={self.settings.schema!r}, tasks={sorted(self.tasks)})"

    # -- configuration ------------------------------------------------------------------

    @property
    def dsn(self) -> str:
        """The DSN in use; resolving it may start the embedded Postgres."""
        return self.settings.dsn if self.settings.dsn is not None else embedded.dsn()

    @property
    def schema(self) -> str:
        return self.settings.schema

    @property
    def uses_embedded(self) -> bool:
        return self.settings.dsn is None

    # -- task registry ------------------------------------------------------------------

    @overload
    def task(self, fn: F, /) -> Task: ...

    @overload
    def task(
        self,
        fn: None = None,
        /,
        *,
        name: str | None = None,
        queue: str | None = None,
        priority: int = 0,
        max_attempts: int | None = None,
        timeout: float | None = None,
        retry: Retry | None = None,
        pass_context: bool = False,
    ) -> Callable[[F], Task]: ...

    def task(
        self,
        fn: Callable[..., Any] | None = None,
        /,
        *,
        name: str | None = None,
        queue: str | None = None,
        priority: int = 0,
        max_attempts: int | None = None,
        timeout: float | None = None,
        retry: Retry | None = None,
        pass_context: bool = False,
    ) -> Task | Callable[[F], Task]:
        """Register a handler: ``@app.task`` or ``@app.task(queue=..., max_attempts=...)``."""

        def register(func: Callable[..., Any]) -> Task:
            task = Task(
                fn=func,
                name=name or func.__name__,
                queue=queue or self.default_queue,
                priority=enqueue.check_priority(priority),
                max_attempts=(max_attempts if max_attempts is not None
                              else self.default_max_attempts),
                timeout=timeout,
                retry=retry or self.default_retry,
                pass_context=pass_context,
            )
            with self._lock:
                if task.name in self.tasks:
                    raise DuplicateTaskError(f"a task named {task.name!r} is already registered")
                self.tasks[task.name] = task
            return task

        return register(fn) if fn is not None else register

    def get_task(self, ref: TaskRef) -> Task:
        name = self._task_name(ref)
        try:
            return self.tasks[name]
        except KeyError:
            raise UnknownTaskError(
                f"unknown task {name!r} (registered: {', '.join(sorted(self.tasks)) or 'none'}); "
                "pass strict=False to enqueue for a task this process does not import"
            ) from None

    @staticmethod
    def _task_name(ref: TaskRef) -> str:
        if isinstance(ref, Task):
            return ref.name
        if isinstance(ref, str):
            return ref
        if callable(ref):
            return str(getattr(ref, "__name__", ref))
        raise TypeError(f"not a task: {ref!r}")

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
        schedule = Schedule.build(
            name, expression, self._task_name(task), args, overlap=overlap, timezone=timezone,
            catch_up=catch_up, queue=queue, priority=priority,
            payload_limit=self.settings.payload_limit)
        with self._lock:
            if name in self.schedules:
                raise CronError(f"a schedule named {name!r} is already defined")
            self.schedules[name] = schedule
        return schedule

    # -- building rows ------------------------------------------------------------------

    def _resolve(self, ref: TaskRef, strict: bool) -> tuple[str, Task | None]:
        name = self._task_name(ref)
        task = self.tasks.get(name)
        if task is None and strict:
            self.get_task(name)  # raises UnknownTaskError with the message
        return name, task

    def _params(
        self,
        ref: TaskRef,
        args: Mapping[str, Any] | None,
        *,
        queue: str | None,
        priority: int | None,
        run_at: datetime | None,
        delay: float | timedelta | None,
        unique_key: str | None,
        max_attempts: int | None,
        strict: bool,
        correlation_id: str | None = None,
        lock: str | None = None,
    ) -> dict[str, Any]:
        name, task = self._resolve(ref, strict)
        if run_at is not None and delay is not None:
            raise PayloadError("pass run_at or delay, not both")
        return {
            "task": name,
            "args": enqueue.encode_args(args, self.settings.payload_limit),
            "queue": queue or (task.queue if task else self.default_queue),
            "priority": enqueue.check_priority(
                priority if priority is not None else (task.priority if task else 0)),
            "run_at": enqueue.check_run_at(run_at),
            "delay": enqueue.delay_seconds(delay),
            "max_attempts": enqueue.check_max_attempts(
                max_attempts if max_attempts is not None
                else (task.max_attempts if task else self.default_max_attempts)),
            "unique_key": unique_key,
            "correlation_id": enqueue.check_correlation_id(correlation_id),
            "lock_key": enqueue.check_lock_key(lock),
            "channel": self.settings.channel,
        }

    def _many_params(
        self,
        jobs: Iterable[tuple[TaskRef, Mapping[str, Any] | None]],
        *,
        queue: str | None,
        priority: int | None,
        run_at: datetime | None,
        delay: float | timedelta | None,
        max_attempts: int | None,
        strict: bool,
        correlation_id: str | None = None,
        lock: str | None = None,
    ) -> dict[str, Any]:
        # The options are the same for every job, so what follows from them and
        # the task (queue, priority, max_attempts, and every check of those) is
        # worked out once per task; per job only its args are encoded.
        per_task: dict[str, tuple[str, int, int]] = {}
        limit = self.settings.payload_limit
        queues: list[str] = []
        tasks: list[str] = []
        encoded: list[str] = []
        priorities: list[int] = []
        attempts: list[int] = []
        for ref, args in jobs:
            name = self._task_name(ref)
            options = per_task.get(name)
            if options is None:
                first = self._params(name, None, queue=queue, priority=priority, run_at=run_at,
                                     delay=delay, unique_key=None, max_attempts=max_attempts,
                                     strict=strict)
                options = per_task[name] = (first["queue"], first["priority"],
                                            first["max_attempts"])
            encoded.append(enqueue.encode_args(args, limit))
            tasks.append(name)
            queues.append(options[0])
            priorities.append(options[1])
            attempts.append(options[2])
        return {
            "queues": queues,
            "tasks": tasks,
            "args": encoded,
            "priorities": priorities,
            "max_attempts": attempts,
            "run_at": enqueue.check_run_at(run_at),
            "delay": enqueue.delay_seconds(delay),
            "correlation_id": enqueue.check_correlation_id(correlation_id),
            "lock_key": enqueue.check_lock_key(lock),
            "channel": self.settings.channel,
        }

    # -- pools (only used when the caller passes no connection) ---------------------------

    def pool(self) -> ConnectionPool[Any]:
        with self._lock:
            if self._pool is None:
                self._pool = ConnectionPool(
                    self.dsn, min_size=1, max_size=4, open=False,
                    timeout=self.settings.connect_timeout,
                    kwargs={"connect_timeout": max(1, int(self.settings.connect_timeout))},
                    check=ConnectionPool.check_connection,
                    # Connect on demand: after an outage the default (retry one slot
                    # with backoff growing to minutes) keeps the pool empty long after
                    # the database is back, and every enqueue times out meanwhile.
                    reconnect_timeout=0,
                    name="jobqueue-producer",
                )
                self._pool.open(wait=False)
            return self._pool

    async def apool(self) -> AsyncConnectionPool[Any]:
        loop = asyncio.get_running_loop()
        if self._apool is not None and self._apool_loop is not loop:
            # An asyncio pool belongs to the loop that opened it (each
            # asyncio.run() makes a new one): open a fresh pool for this loop.
            self._apool = None
        if self._apool is None:
            pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
                self.dsn, min_size=1, max_size=4, open=False,
                timeout=self.settings.connect_timeout,
                kwargs={"connect_timeout": max(1, int(self.settings.connect_timeout))},
                check=AsyncConnectionPool.check_connection,
                # Connect on demand: after an outage the default (retry one slot with
                # backoff growing to minutes) keeps the pool empty long after the
                # database is back, and every enqueue times out meanwhile.
                reconnect_timeout=0,
                name="jobqueue-producer-async",
            )
            await pool.open(wait=False)
            self._apool = pool
            self._apool_loop = loop
        return self._apool

    def close(self) -> None:
        """Close the producer pools (the caller's connections are never touched)."""
        if self._pool is not None:
            self._pool.close()
            self._pool = None
        if self._apool is not None:
            pool, loop = self._apool, self._apool_loop
            self._apool = self._apool_loop = None
            if loop is None or loop.is_closed():
                # Its loop is gone (an asyncio.run() that ended): the pool cannot
                # be closed from another loop; its connections go with it.
                return
            if loop.is_running():
                raise RuntimeError("use `await app.aclose()` inside an event loop")
            loop.run_until_complete(pool.close())

    async def aclose(self) -> None:
        if self._apool is not None:
            pool, self._apool = self._apool, None
            await pool.close()
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    # -- enqueue ------------------------------------------------------------------------

    def enqueue(
        self,
        task: TaskRef,
        args: Mapping[str, Any] | None = None,
        *,
        conn: Any = None,
        queue: str | None = None,
        priority: int | None = None,
        run_at: datetime | None = None,
        delay: float | timedelta | None = None,
        unique_key: str | None = None,
        max_attempts: int | None = None,
        strict: bool = True,
        correlation_id: str | None = None,
        lock: str | None = None,
        raise_on_duplicate: bool = False,
    ) -> int:
        """Enqueue one job and return its id.

        With ``conn`` the job is part of the caller's transaction: it exists
        if and only if the caller commits, and jobqueue never commits for them.
        Without ``conn`` jobqueue uses its own pooled connection and commits.

        ``unique_key``: while a live job (queued or running) holds the key, the
        existing job's id is returned, or with ``raise_on_duplicate``
        :class:`~jobqueue.DuplicateJobError` is raised. ``lock``: jobs sharing a
        lock key never run at the same time, anywhere in the fleet.
        """
        params = self._params(task, args, queue=queue, priority=priority, run_at=run_at,
                              delay=delay, unique_key=unique_key, max_attempts=max_attempts,
                              strict=strict, correlation_id=correlation_id, lock=lock)
        return self._run_sync(conn, lambda c: enqueue.insert_one(
            c, self.settings, params, raise_on_duplicate))

    def enqueue_many(
        self,
        jobs: Iterable[tuple[TaskRef, Mapping[str, Any] | None]],
        *,
        conn: Any = None,
        queue: str | None = None,
        priority: int | None = None,
        run_at: datetime | None = None,
        delay: float | timedelta | None = None,
        max_attempts: int | None = None,
        strict: bool = True,
        correlation_id: str | None = None,
        lock: str | None = None,
    ) -> list[int]:
        """Enqueue many ``(task, args)`` pairs in one statement; ids in input order.

        With ``lock`` all of them share the lock key: they run one at a time."""
        params = self._many_params(jobs, queue=queue, priority=priority, run_at=run_at,
                                   delay=delay, max_attempts=max_attempts, strict=strict,
                                   correlation_id=correlation_id, lock=lock)
        if not params["tasks"]:
            return []
        return self._run_sync(conn, lambda c: enqueue.insert_many(c, self.settings, params))

    async def enqueue_async(
        self,
        task: TaskRef,
        args: Mapping[str, Any] | None = None,
        *,
        conn: Any = None,
        queue: str | None = None,
        priority: int | None = None,
        run_at: datetime | None = None,
        delay: float | timedelta | None = None,
        unique_key: str | None = None,
        max_attempts: int | None = None,
        strict: bool = True,
        correlation_id: str | None = None,
        lock: str | None = None,
        raise_on_duplicate: bool = False,
    ) -> int:
        """:meth:`enqueue` for psycopg ``AsyncConnection`` and SQLAlchemy async sessions."""
        params = self._params(task, args, queue=queue, priority=priority, run_at=run_at,
                              delay=delay, unique_key=unique_key, max_attempts=max_attempts,
                              strict=strict, correlation_id=correlation_id, lock=lock)

        async def run(c: psycopg.AsyncConnection[Any]) -> int:
            return await enqueue.insert_one_async(c, self.settings, params, raise_on_duplicate)

        return await self._run_async(conn, run)

    async def enqueue_many_async(
        self,
        jobs: Iterable[tuple[TaskRef, Mapping[str, Any] | None]],
        *,
        conn: Any = None,
        queue: str | None = None,
        priority: int | None = None,
        run_at: datetime | None = None,
        delay: float | timedelta | None = None,
        max_attempts: int | None = None,
        strict: bool = True,
        correlation_id: str | None = None,
        lock: str | None = None,
    ) -> list[int]:
        params = self._many_params(jobs, queue=queue, priority=priority, run_at=run_at,
                                   delay=delay, max_attempts=max_attempts, strict=strict,
                                   correlation_id=correlation_id, lock=lock)
        if not params["tasks"]:
            return []

        async def run(c: psycopg.AsyncConnection[Any]) -> list[int]:
            return await enqueue.insert_many_async(c, self.settings, params)

        return await self._run_async(conn, run)

    def _run_sync(self, conn: Any, fn: Callable[[psycopg.Connection[Any]], R]) -> R:
        from jobqueue.db.drivers import sync_connection

        try:
            if conn is not None:
                raw = sync_connection(conn)
                if not self._schema_ok:
                    enqueue.probe_schema(raw, self.settings)
                    self._schema_ok = True
                return fn(raw)
            with self.pool().connection() as own:
                if not self._schema_ok:
                    enqueue.probe_schema(own, self.settings)
                    self._schema_ok = True
                return fn(own)
        except PoolTimeout as exc:  # before its base class, OperationalError
            raise enqueue.pool_timeout(self.dsn, self.settings, exc) from None
        except psycopg.OperationalError as exc:
            raise enqueue.db_error(exc) from exc

    async def _run_async(
        self, conn: Any, fn: Callable[[psycopg.AsyncConnection[Any]], Awaitable[R]]
    ) -> R:
        from jobqueue.db.drivers import async_connection

        try:
            if conn is not None:
                raw = await async_connection(conn)
                if not self._schema_ok:
                    await enqueue.probe_schema_async(raw, self.settings)
                    self._schema_ok = True
                return await fn(raw)
            pool = await self.apool()
            async with pool.connection() as own:
                if not self._schema_ok:
                    await enqueue.probe_schema_async(own, self.settings)
                    self._schema_ok = True
                return await fn(own)
        except PoolTimeout as exc:  # before its base class, OperationalError
            raise enqueue.pool_timeout(self.dsn, self.settings, exc) from None
        except psycopg.OperationalError as exc:
            raise enqueue.db_error(exc) from exc

    # -- operations ---------------------------------------------------------------------

    def migrate(self) -> None:
        """Create or upgrade the jobqueue schema (idempotent)."""
        from jobqueue.db import migrate

        migrate.upgrade(self.dsn, self.schema)

    def connect(self) -> psycopg.Connection[Any]:
        """A new, unpooled connection to this queue's database (the caller closes it)."""
        try:
            return psycopg.connect(self.dsn,
                                   connect_timeout=max(1, int(self.settings.connect_timeout)))
        except psycopg.OperationalError as exc:
            raise enqueue.db_error(exc) from None

    def cancel(self, job_id: int, *, conn: Any = None) -> str:
        """Cancel a job: ``"cancelled"`` (it was queued: now in dead_jobs with reason
        ``cancelled``), ``"cancelling"`` (it is running: its worker is asked to stop it;
        async handlers are cancelled, sync ones see ``ctx.cancelled``), or
        ``"not_found"`` (no such live job: finished, dead, or never existed)."""
        from jobqueue import sql
        from jobqueue.queues import cancel_message

        def run(c: psycopg.Connection[Any]) -> str:
            if c.execute(sql.query("cancel_queued", self.schema), {"id": job_id}).fetchone():
                return "cancelled"
            if c.execute(sql.query("cancel_running", self.schema), {"id": job_id}).fetchone():
                c.execute(sql.query("notify", self.schema),
                          {"channel": self.settings.control_channel,
                           "message": cancel_message(job_id)})
                return "cancelling"
            return "not_found"

        return self._run_sync(conn, run)

    def stats(self, conn: Any = None) -> list[QueueOverview]:
        """Per queue: ready, scheduled, running and dead jobs, the oldest ready job's
        age, outcomes over the last minute, paused, and how many live workers serve it."""
        return self._run_sync(conn, lambda c: queue_overview(c, self.schema))

    def run_worker(
        self,
        queues: Iterable[str] | None = None,
        *,
        concurrency: int = 10,
        burst: bool = False,
        **options: Any,
    ) -> None:
        """Run a worker in this process until SIGTERM/SIGINT (or, with burst, until idle)."""
        from jobqueue.worker import Worker, WorkerConfig

        config = WorkerConfig(
            queues=tuple(queues) if queues else (self.default_queue,),
            concurrency=concurrency,
            burst=burst,
            **options,
        )
        Worker(self, config).run()

