"""The worker: one process, asyncio inside, made of small services.

Start order: check the schema, register in ``workers``, then start the
listener, heartbeat, maintenance, completer, the cron scheduler (when the app
defines schedules) and, last, the fetcher. Shutdown (SIGTERM/SIGINT or
:meth:`Worker.request_stop`) runs the other way: stop scheduling and
claiming, let in-flight jobs finish within the grace period, flush their
outcomes, release whatever is still running back to ``queued`` without
counting an attempt, deregister. A second signal exits at once; the leases
make sure nothing is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import signal
import socket
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from jobqueue import sql
from jobqueue.config import describe_dsn
from jobqueue.db.migrate import current_revision, head_revision
from jobqueue.errors import ConfigError, DatabaseError, JobQueueError, SchemaNotMigratedError
from jobqueue.log import configure, get_logger
from jobqueue.metrics import WorkerMetrics
from jobqueue.queues import SETTINGS_CHANGED, parse_cancel
from jobqueue.worker.completer import Completer
from jobqueue.worker.executor import Executor
from jobqueue.worker.fetcher import Fetcher
from jobqueue.worker.gauges import GaugeRefresher
from jobqueue.worker.heartbeat import Heartbeat
from jobqueue.worker.lifecycle import Lifecycle
from jobqueue.worker.listener import Listener, application_name
from jobqueue.worker.maintenance import Maintenance
from jobqueue.worker.scheduler import Scheduler
from jobqueue.worker.service import Service
from jobqueue.worker.systemd import Notifier, SystemdService

if TYPE_CHECKING:
    from jobqueue.app import JobQueue


class WorkerCrashedError(JobQueueError):
    """One of the worker's loops failed with an unexpected error (a bug)."""


@dataclass(frozen=True)
class WorkerConfig:
    """How a worker runs; every interval is in seconds."""

    queues: tuple[str, ...] = ("default",)
    concurrency: int = 10
    burst: bool = False
    batch_size: int = 100
    poll_interval: float = 1.0
    lease: float = 30.0
    heartbeat_interval: float = 2.0
    worker_timeout: float = 30.0
    maintenance_interval: float = 1.0
    shutdown_timeout: float = 30.0
    flush_interval: float = 0.005
    flush_size: int = 500
    handle_signals: bool = True
    # Flow control: relative weights of the queues (None: merge them by
    # priority) and how often a claim takes the oldest jobs whatever their
    # priority (every Nth claim; 0 turns the starvation guard off).
    queue_weights: dict[str, float] | None = None
    fair_every: int = 10
    # Operations: /metrics on metrics_addr:metrics_port (None: no metrics; 0: any
    # free port), the gauge leader's refresh interval, and the LISTEN self-check.
    metrics_port: int | None = None
    metrics_addr: str = "0.0.0.0"
    metrics_interval: float = 10.0
    probe_interval: float = 5.0
    probe_timeout: float = 5.0

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        if not self.queues:
            raise ValueError("a worker needs at least one queue")
        if self.heartbeat_interval * 2 >= self.lease:
            raise ValueError("lease must be more than twice the heartbeat interval")


class Worker:
    """A worker for ``app``; :meth:`run` blocks until it has shut down."""

    def __init__(self, app: JobQueue, config: WorkerConfig | None = None,
                 worker_id: str | None = None) -> None:
        self.app = app
        self.config = config or WorkerConfig()
        self.id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        configure()  # no-op when the host application configured structlog
        self.log = get_logger("jobqueue.worker", worker_id=self.id)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_requested: asyncio.Event | None = None
        self._signals = 0
        self.ready = False
        self.released = 0
        self.abandoned_threads = False
        self.crashed: tuple[str, BaseException] | None = None
        self.stats: dict[str, int] = {}
        self.metrics: WorkerMetrics | None = None
        self.metrics_port: int | None = None  # the bound port, once serving

    # -- public control -------------------------------------------------------------------

    def run(self) -> None:
        try:
            asyncio.run(self.run_async())
        finally:
            self._close_metrics()  # also when startup failed after binding the port

    def request_stop(self) -> None:
        """Begin a graceful shutdown; safe to call from any thread."""
        loop, event = self._loop, self._stop_requested
        if loop is not None and event is not None:
            with contextlib.suppress(RuntimeError):  # its loop is closed: already stopped
                loop.call_soon_threadsafe(event.set)

    # -- the life of a worker -------------------------------------------------------------

    async def run_async(self) -> None:
        cfg = self.config
        app = self.app
        self._loop = asyncio.get_running_loop()
        self._stop_requested = asyncio.Event()
        dsn = app.dsn
        self.log.info("worker.starting", database=describe_dsn(dsn),
                      embedded=app.uses_embedded, schema=app.schema, queues=list(cfg.queues),
                      concurrency=cfg.concurrency, tasks=sorted(app.tasks))
        await self._check_schema(dsn)
        if cfg.metrics_port is not None:
            # Bound before anything registers, so a taken port fails the start
            # cleanly with one line.
            self.metrics = WorkerMetrics()
            try:
                self.metrics_port = self.metrics.serve(cfg.metrics_port, cfg.metrics_addr)
            except OSError as bind_error:
                self.metrics = None
                raise ConfigError(f"cannot serve metrics on {cfg.metrics_addr}:"
                                  f"{cfg.metrics_port}: {bind_error.strerror or bind_error}"
                                  ) from None
            self.log.info("worker.metrics", url=f"http://{cfg.metrics_addr}:"
                          f"{self.metrics_port}/metrics")

        pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
            dsn, min_size=2, max_size=4, open=False, name=f"jobqueue-worker-{os.getpid()}",
            kwargs={"autocommit": True,
                    "connect_timeout": max(1, int(app.settings.connect_timeout)),
                    "fallback_application_name": application_name()},
            configure=_configure_connection, timeout=app.settings.connect_timeout,
            reconnect_timeout=0)
        await pool.open(wait=True, timeout=app.settings.connect_timeout)
        register = {"worker_id": self.id, "hostname": socket.gethostname(), "pid": os.getpid(),
                    "queues": list(cfg.queues), "concurrency": cfg.concurrency}
        async with pool.connection() as conn:
            await conn.execute(sql.query("register_worker", app.schema), register)

        completer = Completer(pool, app.schema, self.id, self.log,
                              flush_interval=cfg.flush_interval, flush_size=cfg.flush_size)
        fetcher: Fetcher
        executor = Executor(app.tasks, completer, self.id, cfg.concurrency, self.log,
                            on_slot_free=lambda: fetcher.wake(),
                            lifecycle=Lifecycle(self.log, self.metrics))
        fetcher = Fetcher(pool, app.schema, self.id, cfg.queues, executor, self.log,
                          batch_size=cfg.batch_size, poll_interval=cfg.poll_interval,
                          lease=cfg.lease, burst=cfg.burst, weights=cfg.queue_weights,
                          fair_every=cfg.fair_every)
        fetcher.pending_outcomes = lambda: completer.pending

        def on_control(message: str) -> None:
            if message == SETTINGS_CHANGED:
                fetcher.claimer.invalidate()
                fetcher.wake()
                return
            job_id = parse_cancel(message)
            if job_id is not None and executor.cancel(job_id):
                self.log.info("job.cancelling", job_id=job_id)

        def on_health(ok: bool) -> None:
            fetcher.fast_poll = not ok

        listener = Listener(dsn, app.schema, app.settings.channel, self.id, cfg.queues,
                            on_notify=fetcher.wake, on_health=on_health, log=self.log,
                            control_channel=app.settings.control_channel,
                            on_control=on_control,
                            connect_timeout=app.settings.connect_timeout,
                            send_probe=functools.partial(_send_probe, pool, app.schema),
                            probe_interval=cfg.probe_interval,
                            probe_timeout=cfg.probe_timeout)
        heartbeat = Heartbeat(pool, app.schema, self.id, register, self.log,
                              interval=cfg.heartbeat_interval, lease=cfg.lease)
        heartbeat.on_cancel_requested = executor.cancel
        heartbeat.held_ids = lambda: [*executor.inflight, *completer.pending_ids()]
        maintenance = Maintenance(pool, app.schema, self.log, interval=cfg.maintenance_interval,
                                  worker_timeout=cfg.worker_timeout,
                                  session_grace=max(cfg.heartbeat_interval * 3, 5.0),
                                  channel=app.settings.channel)
        notifier = Notifier()
        systemd = SystemdService(notifier, lambda: (
            f"{len(executor.inflight)} in flight, {executor.started} started, "
            f"{completer.counts['succeeded']} succeeded, {completer.counts['retried']} retried, "
            f"{completer.counts['dead']} dead; LISTEN {'ok' if listener.healthy else 'down'}"))
        self.services = {"listener": listener, "heartbeat": heartbeat,
                         "maintenance": maintenance, "completer": completer,
                         "fetcher": fetcher, "systemd": systemd}
        if app.schedules and not cfg.burst:
            # Only workers whose app defines schedules compete to fire them; a
            # burst worker drains and exits, so it takes no part in scheduling.
            self.services["scheduler"] = Scheduler(pool, app, self.log)
        self.executor = executor
        for service in self.services.values():
            service.on_crash = self._service_crashed
        if self.metrics is not None:
            self.metrics.in_flight = lambda: len(executor.inflight)
            self.metrics.concurrency = cfg.concurrency
            self.metrics.listener = listener
            self.services["gauges"] = GaugeRefresher(
                dsn, app.schema, self.metrics, self.log, interval=cfg.metrics_interval,
                worker_timeout=cfg.worker_timeout, connect_timeout=app.settings.connect_timeout)
            self.services["gauges"].on_crash = self._service_crashed
            self.services["gauges"].start()
        for service in (listener, heartbeat, maintenance, completer):
            service.start()
        if "scheduler" in self.services:
            self.services["scheduler"].start()
        with contextlib.suppress(asyncio.TimeoutError):
            # Not fatal: without LISTEN the fetcher still polls.
            await asyncio.wait_for(listener.connected.wait(), app.settings.connect_timeout)
        fetcher.start()
        self._install_signals()
        self.ready = True
        notifier.notify("READY=1", f"STATUS=listening on {', '.join(cfg.queues)}")
        systemd.start()
        self.log.info("worker.started", listening=listener.healthy, systemd=notifier.enabled,
                      metrics_port=self.metrics_port)
        try:
            stop_wait = asyncio.ensure_future(self._stop_requested.wait())
            drained = asyncio.ensure_future(fetcher.drained.wait())
            await asyncio.wait({stop_wait, drained}, return_when=asyncio.FIRST_COMPLETED)
            stop_wait.cancel()
            drained.cancel()
        finally:
            notifier.notify("STOPPING=1", "STATUS=stopping: finishing in-flight jobs")
            await systemd.stop()
            await self._shutdown(pool, executor, completer)
            self._remove_signals()
        if self.crashed is not None:
            name, exc = self.crashed
            raise WorkerCrashedError(f"the worker's {name} failed: {type(exc).__name__}: {exc}")

    def _close_metrics(self) -> None:
        if self.metrics is not None:
            self.metrics.close()

    def _service_crashed(self, service: Service, exc: BaseException) -> None:
        # A bug, not a database fault (those are retried inside each loop):
        # stop gracefully and exit non-zero so a supervisor restarts us.
        self.log.error("worker.service_crashed", service=service.name,
                       error=f"{type(exc).__name__}: {exc}")
        if self.crashed is None:
            self.crashed = (service.name, exc)
        if self._stop_requested is not None:
            self._stop_requested.set()

    async def _shutdown(self, pool: AsyncConnectionPool[Any], executor: Executor,
                        completer: Completer) -> None:
        cfg, s = self.config, self.services
        self.log.info("worker.stopping", in_flight=len(executor.inflight),
                      grace=cfg.shutdown_timeout)
        if "scheduler" in s:
            await s["scheduler"].stop()  # a stopping worker fires no more ticks
        await s["fetcher"].stop()
        finished = await executor.wait_idle(cfg.shutdown_timeout)
        if not finished:
            cancelled = await executor.cancel_all()
            self.log.warning("worker.grace_expired", unfinished=cancelled)
        self.abandoned_threads = executor.threads_busy()
        await completer.stop(timeout=max(cfg.shutdown_timeout, 5.0))
        if completer.pending:
            self.log.error("worker.unflushed", pending=completer.pending,
                           note="these jobs stay leased and will be rescued and run again")
        for name in ("heartbeat", "maintenance", "listener", "gauges"):
            if name in s:
                await s[name].stop()
        try:
            async with pool.connection(timeout=5.0) as conn:
                cur = await conn.execute(sql.query("release_jobs", self.app.schema),
                                         {"worker_id": self.id})
                released = [row[0] for row in await cur.fetchall()]
                self.released = len(released)
                if released:
                    await conn.execute(sql.query("release_locks", self.app.schema),
                                       {"ids": released, "worker_id": self.id})
                await conn.execute(sql.query("deregister_worker", self.app.schema),
                                   {"worker_id": self.id})
        except Exception as exc:  # noqa: BLE001 - the lease covers what we could not release
            self.log.error("worker.release_failed", error=str(exc).strip())
        executor.close()
        await pool.close()
        self._close_metrics()
        f = s["fetcher"]
        self.stats = {"claimed": f.claimed if isinstance(f, Fetcher) else 0,
                      "released": self.released, **completer.counts}
        self.log.info("worker.stopped", **self.stats)

    async def _check_schema(self, dsn: str) -> None:
        await asyncio.to_thread(check_schema, dsn, self.app.schema,
                                self.app.settings.connect_timeout)

    # -- signals ------------------------------------------------------------------------

    def _install_signals(self) -> None:
        if not self.config.handle_signals or self._loop is None:
            return
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                self._loop.add_signal_handler(sig, self._on_signal, sig)

    def _remove_signals(self) -> None:
        if not self.config.handle_signals or self._loop is None:
            return
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                self._loop.remove_signal_handler(sig)

    def _on_signal(self, sig: signal.Signals) -> None:
        self._signals += 1
        if self._signals == 1:
            self.log.info("worker.signal", signal=sig.name, action="graceful shutdown")
            if self._stop_requested is not None:
                self._stop_requested.set()
        else:
            # Second signal: leave now. Jobs still leased are rescued by the
            # fleet once the lease expires or Postgres sees our session end.
            self.log.warning("worker.signal", signal=sig.name, action="exit now")
            os._exit(128 + sig.value)


def check_schema(dsn: str, schema: str, connect_timeout: float = 5.0) -> None:
    """Raise a one-line error unless ``schema`` is migrated to this jobqueue's head."""
    try:
        with psycopg.connect(dsn, connect_timeout=max(1, int(connect_timeout))) as conn:
            revision = current_revision(conn, schema)
    except psycopg.OperationalError as exc:
        raise DatabaseError(f"database unavailable: {str(exc).strip().splitlines()[0]}") from None
    # The hint must name the schema: a bare `jobqueue migrate` migrates the default one.
    flag = f" --schema {schema}" if schema != "jobqueue" else ""
    if revision is None:
        raise SchemaNotMigratedError(
            f"schema {schema!r} is not migrated: run `jobqueue migrate{flag}`")
    head = head_revision()
    if revision != head:
        raise SchemaNotMigratedError(
            f"schema {schema!r} is at revision {revision}, this jobqueue needs {head}: "
            f"run `jobqueue migrate{flag}`")


async def _configure_connection(conn: psycopg.AsyncConnection[Any]) -> None:
    # Claims, acks and heartbeats may be lost in a crash without breaking the
    # contract: a lost claim leaves the job queued, a lost ack or retry leaves
    # it leased, and the lease expiry re-runs it (at-least-once allows that).
    # Not waiting for the WAL flush on these commits is therefore safe, and it
    # takes the fsync off the worker's hot path. Enqueue never goes through
    # this pool, so enqueued jobs stay durable.
    await conn.execute("SET synchronous_commit = off")
    # psycopg prepares a statement after five runs, and after five more
    # Postgres may switch a prepared statement to a generic plan, made without
    # the parameter values. For the claim (per-queue LATERAL heads, LIMIT from
    # a parameter) that generic plan was measured 10x slower once the backlog
    # grows (26k -> 2.5k jobs/s at 100k jobs). Always planning with the real
    # values costs a fraction of a millisecond per statement.
    await conn.execute("SET plan_cache_mode = force_custom_plan")


async def _send_probe(pool: AsyncConnectionPool[Any], schema: str, channel: str,
                      payload: str) -> None:
    """The listener's probe: a NOTIFY from a pooled session (see Listener)."""
    async with pool.connection() as conn:
        await conn.execute(sql.query("probe_notify", schema),
                           {"channel": channel, "payload": payload})
