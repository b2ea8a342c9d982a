"""The worker: one process, asyncio inside, composed of small services.

:class:`Worker` gets the queue's settings and task registry (never the
``JobQueue`` itself) and builds its parts in dependency order, each given its
collaborators: an :class:`~jobqueue.db.store.AsyncStore` over the worker's
pool, the shared :class:`~jobqueue.worker.state.WorkerState`, the completer
(which persists outcomes, then tells the lifecycle observer), the executor,
the claimer and fetcher, the heartbeat, the maintenance leader, the listener,
the cron scheduler (when the app defines schedules) and the metrics gauges.

Start order is the order of :attr:`Worker.services`: the fetcher comes last,
once the rest is running. Shutdown (SIGTERM/SIGINT or
:meth:`Worker.request_stop`) stops the *intake* services first (fetcher,
scheduler), lets in-flight jobs finish within the grace period, then stops
the rest in reverse start order (the completer flushes as it stops), releases
whatever still runs back to ``queued`` without counting an attempt, and
deregisters. A second signal exits at once; the leases make sure nothing is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import uuid
from dataclasses import dataclass

from jobqueue.config import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_CONCURRENCY,
    DEFAULT_HEARTBEAT_INTERVAL,
    DEFAULT_LEASE,
    DEFAULT_POLL_INTERVAL,
    DEFAULT_PREFETCH_PER_SLOT,
    DEFAULT_QUEUE,
    DEFAULT_SHUTDOWN_TIMEOUT,
    DEFAULT_WORKER_TIMEOUT,
    Settings,
    describe_dsn,
    migrate_hint,
)
from jobqueue.db import fleet, jobs
from jobqueue.db.migrate import head_revision, revision
from jobqueue.db.store import AsyncStore, PoolOptions
from jobqueue.errors import ConfigError, JobQueueError, SchemaNotMigratedError
from jobqueue.log import configure, get_logger
from jobqueue.metrics import WorkerMetrics
from jobqueue.outcome import Outcome
from jobqueue.protocol import SETTINGS_CHANGED, parse_cancel
from jobqueue.registry import Registry
from jobqueue.worker.claimer import Claimer
from jobqueue.worker.completer import Completer
from jobqueue.worker.executor import Executor
from jobqueue.worker.fetcher import Fetcher
from jobqueue.worker.gauges import GaugeRefresher
from jobqueue.worker.heartbeat import Heartbeat
from jobqueue.worker.lifecycle import Lifecycle
from jobqueue.worker.listener import Listener, application_name
from jobqueue.worker.maintenance import Maintenance
from jobqueue.worker.processes import Limits, ProcessPool
from jobqueue.worker.progress import ProgressWriter
from jobqueue.worker.recycler import Recycler
from jobqueue.worker.scheduler import Scheduler
from jobqueue.worker.service import Service
from jobqueue.worker.state import WorkerState
from jobqueue.worker.systemd import Notifier, SystemdService
from jobqueue.worker.transactional import Transactions


class WorkerCrashedError(JobQueueError):
    """One of the worker's loops failed with an unexpected error (a bug)."""


@dataclass(frozen=True)
class WorkerConfig:
    """How a worker runs; every interval is in seconds."""

    queues: tuple[str, ...] = (DEFAULT_QUEUE,)
    concurrency: int = DEFAULT_CONCURRENCY
    #: Claimed jobs held ready beyond the running ones (None: 4 per unit of
    #: concurrency, or for short jobs what the worker runs in 50 ms, at most 1,000).
    prefetch: int | None = None
    burst: bool = False
    batch_size: int = DEFAULT_BATCH_SIZE
    poll_interval: float = DEFAULT_POLL_INTERVAL
    lease: float = DEFAULT_LEASE
    heartbeat_interval: float = DEFAULT_HEARTBEAT_INTERVAL
    worker_timeout: float = DEFAULT_WORKER_TIMEOUT
    maintenance_interval: float = 1.0
    shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT
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
    # The process model: children for executor="process" tasks (None: one per
    # CPU), recycled after so many jobs or past so many MB of resident memory;
    # with recycle, the same limits apply to this worker itself (under a
    # supervisor that starts the next one: jobqueue worker --supervise).
    processes: int | None = None
    max_jobs_per_child: int | None = None
    max_memory: float | None = None
    recycle: bool = False

    def __post_init__(self) -> None:
        if self.processes is not None and self.processes < 1:
            raise ValueError("processes must be >= 1")
        if self.max_jobs_per_child is not None and self.max_jobs_per_child < 1:
            raise ValueError("max_jobs_per_child must be >= 1")
        if self.max_memory is not None and self.max_memory <= 0:
            raise ValueError("max_memory must be > 0 MB")
        if self.concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        if not self.queues:
            raise ValueError("a worker needs at least one queue")
        if self.heartbeat_interval * 2 >= self.lease:
            raise ValueError("lease must be more than twice the heartbeat interval")
        if self.prefetch is not None and self.prefetch < 0:
            raise ValueError("prefetch must be >= 0")

    @property
    def buffered(self) -> int:
        """How many claimed jobs may wait for a slot."""
        if self.prefetch is not None:
            return self.prefetch
        return DEFAULT_PREFETCH_PER_SLOT * self.concurrency


def worker_pool(settings: Settings, concurrency: int) -> PoolOptions:
    # Claims, acks and heartbeats may be lost in a crash without breaking the
    # contract: a lost claim leaves the job queued, a lost ack or retry leaves
    # it leased, and the lease expiry re-runs it (at-least-once allows that).
    # Not waiting for the WAL flush on these commits is therefore safe, and it
    # takes the fsync off the worker's hot path. Enqueue never goes through
    # this pool, so enqueued jobs stay durable.
    # psycopg prepares a statement after five runs, and after five more
    # Postgres may switch a prepared statement to a generic plan, made without
    # the parameter values. For the claim (per-queue LATERAL heads, LIMIT from
    # a parameter) that generic plan was measured 10x slower once the backlog
    # grows (26k -> 2.5k jobs/s at 100k jobs). Always planning with the real
    # values costs a fraction of a millisecond per statement.
    # JIT compilation never pays for a queue's statements, which touch a few
    # rows each: but the planner's estimate for the claim (per-queue LATERAL
    # heads under a LIMIT it cannot see) grows with the backlog and crosses
    # jit_above_cost at a few hundred thousand ready jobs. Measured at 300k:
    # 1.1 ms per claim without JIT, 45-130 ms with it (almost all of it
    # compiling), which was the whole of the large-backlog collapse.
    # Behind a transaction pooler there is no session to set them in: the
    # claim sets them for its own transaction instead (worker_transaction).
    return PoolOptions(name=f"jobqueue-worker-{os.getpid()}", min_size=2, max_size=4,
                       autocommit=True, application_name=application_name(),
                       settings=() if settings.pooled else ("worker_session",))


class Worker:
    """A worker for the tasks of ``registry``; :meth:`run` blocks until it has shut down."""

    def __init__(self, settings: Settings, registry: Registry,
                 config: WorkerConfig | None = None, worker_id: str | None = None) -> None:
        self.settings = settings
        self.registry = registry
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
        #: Why this worker stopped to be recycled (config.recycle), if it did.
        self.recycled: str | None = None
        self.stats: dict[str, int] = {}
        self.metrics: WorkerMetrics | None = None
        self.metrics_port: int | None = None  # the bound port, once serving
        self.services: dict[str, Service] = {}
        # Pools of transactional handlers (only when a task is transactional).
        self.transactions: Transactions | None = None

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
        self._loop = asyncio.get_running_loop()
        self._stop_requested = asyncio.Event()
        store = AsyncStore(self.settings, options=worker_pool(self.settings, cfg.concurrency),
                           probe=False)
        self.log.info("worker.starting", database=describe_dsn(store.dsn),
                      embedded=self.settings.dsn is None, schema=store.schema,
                      queues=list(cfg.queues), concurrency=cfg.concurrency,
                      tasks=sorted(self.registry.tasks))
        await check_schema(store)
        self._serve_metrics()
        await store.pool(wait=True)
        registration = fleet.Registration(self.id, socket.gethostname(), os.getpid(),
                                          list(cfg.queues), cfg.concurrency)
        await store.run(fleet.register(registration))
        # Two flushes' worth of unwritten outcomes, or what the worker may hold.
        state = WorkerState(self.id, cfg.concurrency, cfg.buffered,
                            adaptive=cfg.prefetch is None,
                            unacked_limit=max(2 * cfg.flush_size,
                                              cfg.concurrency + cfg.buffered),
                            lease_timeout=min(cfg.lease, cfg.worker_timeout))
        self.state = state
        services = self._compose(store, state, registration)
        self.services = {s.name: s for s in services}
        for service in services:
            service.on_crash = self._service_crashed
        listener = self.services.get("listener")
        if self.poll_only is not None:
            self.log.info("worker.poll_only", poll_interval=cfg.poll_interval / 4,
                          reason=self.poll_only)
        for service in services:
            if isinstance(service, Fetcher) and isinstance(listener, Listener):
                with contextlib.suppress(asyncio.TimeoutError):
                    # Not fatal: without LISTEN the fetcher still polls.
                    await asyncio.wait_for(listener.connected.wait(),
                                           self.settings.connect_timeout)
            if not isinstance(service, SystemdService):
                service.start()
        self._install_signals()
        self.ready = True
        self.notifier.notify("READY=1", f"STATUS=listening on {', '.join(cfg.queues)}")
        self.services["systemd"].start()
        listening = isinstance(listener, Listener) and listener.healthy
        self.log.info("worker.started", listening=listening, pooler=self.settings.pooler,
                      systemd=self.notifier.enabled,
                      metrics_port=self.metrics_port)
        try:
            fetcher = self.services["fetcher"]
            assert isinstance(fetcher, Fetcher)
            stop_wait = asyncio.ensure_future(self._stop_requested.wait())
            drained = asyncio.ensure_future(fetcher.drained.wait())
            await asyncio.wait({stop_wait, drained}, return_when=asyncio.FIRST_COMPLETED)
            stop_wait.cancel()
            drained.cancel()
        finally:
            self.notifier.notify("STOPPING=1", "STATUS=stopping: finishing in-flight jobs")
            await self._shutdown(store, state)
            self._remove_signals()
        if self.crashed is not None:
            name, exc = self.crashed
            raise WorkerCrashedError(f"the worker's {name} failed: {type(exc).__name__}: {exc}")

    def _compose(self, store: AsyncStore, state: WorkerState,
                 registration: fleet.Registration) -> list[Service]:
        """Every part, built in dependency order, each given its collaborators."""
        cfg = self.config
        completer = Completer(store, state, self.log, observers=[
            Lifecycle(self.log, self.metrics).finished], flush_interval=cfg.flush_interval,
            flush_size=cfg.flush_size)
        progress = ProgressWriter(store, self.id, self.log)
        if any(t.transactional for t in self.registry.tasks.values()):
            self.transactions = Transactions(self.settings, self.id, cfg.concurrency,
                                             application_name())
        processes = None
        memory = None if cfg.max_memory is None else int(cfg.max_memory * 2**20)
        if any(t.executor == "process" for t in self.registry.tasks.values()):
            processes = ProcessPool(self.registry.tasks, cfg.processes or os.cpu_count() or 1,
                                    self.log, limits=Limits(cfg.max_jobs_per_child, memory))
            processes.start()  # forked now, with the app loaded and before any job
            self.log.info("worker.processes", size=processes.size, pids=processes.pids,
                          max_jobs_per_child=cfg.max_jobs_per_child,
                          max_memory_mb=cfg.max_memory)
        self.executor = executor = Executor(self.registry.tasks, state, completer,
                                            Lifecycle(self.log, self.metrics), self.log,
                                            result_limit=self.registry.payload_limit,
                                            progress=progress, transactions=self.transactions,
                                            processes=processes)
        claimer = Claimer(store.schema, self.id, cfg.queues, cfg.lease,
                          weights=cfg.queue_weights, fair_every=cfg.fair_every,
                          attempts=self.registry.attempts(),
                          local_settings=self.settings.pooled)
        fetcher = Fetcher(store, state, claimer, executor, self.log, batch_size=cfg.batch_size,
                          poll_interval=cfg.poll_interval, burst=cfg.burst)

        def on_control(message: str) -> None:
            if message == SETTINGS_CHANGED:
                claimer.invalidate()
                state.wake_fetcher()
                return
            job_id = parse_cancel(message)
            if job_id is not None and executor.cancel(job_id):
                self.log.info("job.cancelling", job_id=job_id)

        listener: Listener | None = None
        if self.poll_only is None:
            listener = Listener(store, state, cfg.queues, on_control, self.log,
                                listen_dsn=self.settings.listen_dsn,
                                probe_interval=cfg.probe_interval,
                                probe_timeout=cfg.probe_timeout)
        services: list[Service] = []
        if self.metrics is not None:
            self.metrics.in_flight = lambda: len(state.inflight)
            self.metrics.concurrency = cfg.concurrency
            self.metrics.listener = listener
            self.metrics.processes = processes
            services.append(GaugeRefresher(store, self.metrics, self.log,
                                           interval=cfg.metrics_interval,
                                           worker_timeout=cfg.worker_timeout))
        if listener is not None:
            services.append(listener)
        services += [
            Heartbeat(store, state, registration, self.log, interval=cfg.heartbeat_interval,
                      lease=cfg.lease, on_cancel_requested=executor.cancel,
                      on_recheck=executor.recheck),
            Maintenance(store, self.log, interval=cfg.maintenance_interval,
                        worker_timeout=cfg.worker_timeout,
                        session_grace=max(cfg.heartbeat_interval * 3, 5.0)),
            completer,
            progress,
        ]
        if self.registry.schedules and not cfg.burst:
            # Only workers whose app defines schedules compete to fire them; a
            # burst worker drains and exits, so it takes no part in scheduling.
            services.append(Scheduler(store, self.registry, self.log))
        if cfg.recycle and (cfg.max_jobs_per_child is not None or memory is not None):
            services.append(Recycler(state, self.log, self._recycle,
                                     max_jobs=cfg.max_jobs_per_child, max_memory=memory))
        self.notifier = Notifier()
        services += [fetcher, SystemdService(self.notifier, lambda: (
            f"{len(state.inflight)} in flight, {state.started} started, "
            f"{state.counts['succeeded']} succeeded, {state.counts['retried']} retried, "
            f"{state.counts['dead']} dead; {self._listen_status()}"))]
        return services

    @property
    def poll_only(self) -> str | None:
        """Why this worker does not LISTEN (None: it does)."""
        if self.settings.pooled and self.settings.listen_dsn is None:
            return ("behind a transaction pooler LISTEN would hold a server connection "
                    "other clients share, and notifications could go to any of them; "
                    "give a direct connection as listen_dsn (--listen-dsn, "
                    "$JOBQUEUE_LISTEN_DSN) to be woken at once")
        return None

    def _listen_status(self) -> str:
        listener = self.services.get("listener")
        if not isinstance(listener, Listener):
            return "polling (no LISTEN)"
        return f"LISTEN {'ok' if listener.healthy else 'down'}"

    def _serve_metrics(self) -> None:
        cfg = self.config
        if cfg.metrics_port is None:
            return
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

    def _close_metrics(self) -> None:
        if self.metrics is not None:
            self.metrics.close()

    def _recycle(self, reason: str) -> None:
        self.recycled = reason
        if self._stop_requested is not None:
            self._stop_requested.set()

    def _service_crashed(self, service: Service, exc: BaseException) -> None:
        # A bug, not a database fault (those are retried inside each loop):
        # stop gracefully and exit non-zero so a supervisor restarts us.
        self.log.error("worker.service_crashed", service=service.name,
                       error=f"{type(exc).__name__}: {exc}")
        if self.crashed is None:
            self.crashed = (service.name, exc)
        if self._stop_requested is not None:
            self._stop_requested.set()

    async def _shutdown(self, store: AsyncStore, state: WorkerState) -> None:
        cfg = self.config
        services = list(self.services.values())
        # Buffered jobs are not started any more: they go back to the queue.
        self.executor.stop_starting()
        if self.executor.processes is not None:
            self.executor.processes.draining()
        for job in state.buffer:
            self.executor.completer.record(Outcome.released(job))
        state.buffer.clear()
        self.log.info("worker.stopping", in_flight=len(state.inflight),
                      buffered=len(state.buffer), grace=cfg.shutdown_timeout)
        # A stopping worker claims nothing more and fires no more ticks ...
        for service in reversed(services):
            if service.intake:
                await service.stop()
        # ... lets its running jobs finish within the grace ...
        if not await self.executor.wait_idle(cfg.shutdown_timeout):
            cancelled = await self.executor.cancel_all()
            self.log.warning("worker.grace_expired", unfinished=cancelled)
        self.abandoned_threads = self.executor.threads_busy()
        if self.executor.processes is not None:
            await self.executor.processes.close()  # what still runs there is released below
        # ... then stops the rest, last started first (the completer flushes).
        for service in reversed(services):
            if not service.intake:
                await service.stop(timeout=max(cfg.shutdown_timeout, 5.0)
                                   if isinstance(service, Completer) else 5.0)
        if state.unacked:
            self.log.error("worker.unflushed", pending=len(state.unacked),
                           note="these jobs stay leased and will be rescued and run again")
        try:
            # Whatever else is still ours (handlers past the grace, unflushed).
            self.released = state.counts["released"] + await store.run(
                jobs.release_all(self.id))
            await store.run(fleet.deregister(self.id))
        except JobQueueError as exc:  # the lease covers what we could not release
            self.log.error("worker.release_failed", error=str(exc))
        self.executor.close()
        if self.transactions is not None:
            await self.transactions.aclose()
        await store.aclose()
        self._close_metrics()
        self.stats = {"claimed": state.claimed, "released": self.released,
                      "succeeded": state.counts["succeeded"], "retried": state.counts["retried"],
                      "dead": state.counts["dead"], "lease_lost": state.counts["lease_lost"]}
        self.log.info("worker.stopped", **self.stats)

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


async def check_schema(store: AsyncStore) -> None:
    """Raise a one-line error unless the schema is migrated to this jobqueue's head."""
    conn = await store.connect()
    try:
        found = await store.run(revision(store.schema), conn)
    finally:
        await conn.close()
    schema = store.schema
    if found is None:
        raise SchemaNotMigratedError(
            f"schema {schema!r} is not migrated: run {migrate_hint(schema)}")
    head = head_revision()
    if found != head:
        raise SchemaNotMigratedError(
            f"schema {schema!r} is at revision {found}, this jobqueue needs {head}: "
            f"run {migrate_hint(schema)}")
