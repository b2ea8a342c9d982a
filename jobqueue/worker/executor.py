"""The executor: runs handlers, at most ``concurrency`` at a time, one Outcome each.

Async handlers run on the worker's event loop, each job in its own asyncio
task; sync handlers run in a pull-based thread pool of the same size
(:mod:`jobqueue.worker.threads`), and a sync task with a timeout in a forked
child that can be killed. Whatever a handler raises becomes that job's
:class:`~jobqueue.outcome.Outcome` only: it never reaches the loop or another
job. Every attempt that ends yields exactly one Outcome, handed to the
completer; an attempt cut short by shutdown yields none (its job is released
with the rest).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from jobqueue import tracing
from jobqueue.config import DEFAULT_PAYLOAD_LIMIT, NEWER_VERSION_DELAY
from jobqueue.errors import LeaseLostError, PayloadError, ResultError
from jobqueue.outcome import DeadReason, ErrorEntry, Kind, Outcome
from jobqueue.payload import encode_result
from jobqueue.rows import ClaimedJob
from jobqueue.tasks import JobContext, Task
from jobqueue.worker.completer import Completer
from jobqueue.worker.forked import HandlerProcessDied, fork_available, run_forked
from jobqueue.worker.lifecycle import Lifecycle
from jobqueue.worker.processes import ProcessPool
from jobqueue.worker.progress import ProgressWriter
from jobqueue.worker.state import Running, WorkerState
from jobqueue.worker.threads import ThreadRunner
from jobqueue.worker.transactional import Transactions


class HandlerTimeoutError(TimeoutError):
    """A handler ran past its task's ``timeout``.

    Its name ends in ``TimeoutError`` because it is recorded as the attempt's
    error type: a search of errors (or dead jobs) for "TimeoutError" must find
    handler timeouts too.
    """


class Executor:
    def __init__(self, tasks: Mapping[str, Task], state: WorkerState, completer: Completer,
                 lifecycle: Lifecycle, log: Any, *, result_limit: int = DEFAULT_PAYLOAD_LIMIT,
                 progress: ProgressWriter | None = None,
                 transactions: Transactions | None = None,
                 processes: ProcessPool | None = None) -> None:
        self.tasks = tasks
        self.state = state
        self.completer = completer
        self.lifecycle = lifecycle
        self.log = log
        self.result_limit = result_limit
        self.progress = progress
        self.transactions = transactions
        # Handlers of executor="process" tasks (a pool only when there is one).
        self.processes = processes
        # Sync handlers without a timeout: a thread each, results back in batches.
        self.runner: ThreadRunner[ClaimedJob, Outcome] = ThreadRunner(
            state.concurrency, asyncio.get_running_loop(), self._delivered)
        # Where fork is unavailable, timed sync handlers use an executor (a
        # future to wait on with a timeout).
        self.threads = ThreadPoolExecutor(max_workers=state.concurrency,
                                          thread_name_prefix="jobqueue-timed")
        self._busy_threads = 0
        self._busy_lock = threading.Lock()
        # Jobs an operator cancelled (jobqueue cancel) while they ran.
        self.cancel_requested: set[int] = set()
        self.starting = True  # False once the worker stops: buffered jobs stay unstarted
        # (task, version) pairs newer than this worker knows, logged once each.
        self._newer_seen: set[tuple[str, int]] = set()

    def accept(self, jobs: list[ClaimedJob]) -> None:
        """Claimed jobs: into the buffer, and started while there are free slots."""
        self.state.buffer.extend(jobs)
        self.fill()

    def fill(self) -> None:
        state = self.state
        if not self.starting or state.lease_in_doubt():
            return  # a buffered job may be someone else's now: the heartbeat checks first
        while state.buffer and len(state.inflight) < state.concurrency:
            self.submit(state.buffer.popleft())

    def recheck(self, still_ours: set[int]) -> None:
        """A heartbeat after doubt: keep the buffered jobs still leased to us, report
        the others as lease lost (never started), and go on."""
        state = self.state
        lost = [job for job in state.buffer if job.id not in still_ours]
        if lost:
            state.buffer = deque(job for job in state.buffer if job.id in still_ours)
            self.completer.report([Outcome(Kind.LEASE_LOST, job) for job in lost])
            for job in lost:
                if job.lock_key is not None:
                    self.completer.unlock(job.id)  # guarded: never another worker's key
        state.suspect = False
        self.fill()
        state.wake_fetcher()

    def stop_starting(self) -> None:
        """Shutdown: run no more buffered jobs (the worker releases them)."""
        self.starting = False

    def submit(self, job: ClaimedJob) -> None:
        state = self.state
        ctx = JobContext(id=job.id, task=job.task, queue=job.queue, attempt=job.attempts,
                         max_attempts=job.max_attempts, worker_id=state.worker_id,
                         parent_results=job.parent_results or [],
                         _on_progress=self.progress.report if self.progress else None)
        handler = self.tasks.get(job.task)
        state.idle.clear()
        state.started += 1
        if (handler is not None and not handler.is_async and handler.timeout is None
                and handler.executor == "thread"):
            state.inflight[job.id] = Running(None, ctx, False, False)
            self.runner.submit(job, functools.partial(self._attempt_in_thread, job, ctx,
                                                      handler))
            return
        task = asyncio.get_running_loop().create_task(self._attempt(job, ctx, handler))
        state.inflight[job.id] = Running(task, ctx, handler is None or handler.is_async,
                                         handler is not None)
        task.add_done_callback(functools.partial(self._done, job))

    def _done(self, job: ClaimedJob, task: asyncio.Task[Outcome]) -> None:
        # A task cancelled by shutdown has no outcome: its job (and lock key)
        # is released with the rest.
        self._finished(job, None if task.cancelled() else task.result())

    def _delivered(self, batch: list[tuple[ClaimedJob, Outcome]]) -> None:
        for job, outcome in batch:
            self._finished(job, outcome)

    def _finished(self, job: ClaimedJob, outcome: Outcome | None) -> None:
        state = self.state
        state.inflight.pop(job.id, None)
        self.cancel_requested.discard(job.id)
        if self.progress is not None:
            self.progress.forget(job.id)
        if outcome is not None:
            self.completer.record(outcome)
            if job.lock_key is not None:
                self.completer.unlock(job.id)  # freed with the outcome
        self.fill()
        if not state.inflight:
            state.idle.set()
        state.wake_fetcher()  # there is room to claim

    async def wait_idle(self, timeout: float | None) -> bool:
        """Wait until no job is in flight; False if ``timeout`` passed first."""
        try:
            await asyncio.wait_for(self.state.idle.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        return True

    async def cancel_all(self) -> int:
        """Shutdown past the grace period: stop what can be stopped.

        Async handlers are cancelled; sync handlers are told through
        ``ctx.cancelled`` (a thread cannot be interrupted). Neither records an
        outcome: the worker releases their jobs back to the queue.
        """
        pending = list(self.state.inflight.values())
        tasks = [r.task for r in pending if r.task is not None]
        for running in pending:
            running.ctx._cancel.set()
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=1.0)
        for job_id in [k for k, r in self.state.inflight.items() if r.task is None]:
            # Threads cannot be stopped: their jobs are released with the rest,
            # and what they return now is not written.
            self.state.inflight.pop(job_id)
        if not self.state.inflight:
            self.state.idle.set()
        return len(pending)

    def cancel(self, job_id: int) -> bool:
        """An operator cancelled this running job: stop it if we run it.

        Async handlers are cancelled; a sync handler in a child process is
        killed; one in a thread sees ``ctx.cancelled`` (and if it returns
        normally anyway, it succeeded). A stopped job is dead with reason
        ``cancelled``.
        """
        running = self.state.inflight.get(job_id)
        if running is None:
            return self._cancel_buffered(job_id)
        self.cancel_requested.add(job_id)
        running.ctx._cancel.set()
        if running.task is not None and (running.is_async or running.forked):
            running.task.cancel()  # async: CancelledError in the handler; forked: kills the child
        return True

    def _cancel_buffered(self, job_id: int) -> bool:
        # Claimed ahead and not started: dead as cancelled without running.
        job = next((j for j in self.state.buffer if j.id == job_id), None)
        if job is None:
            return False
        self.state.buffer.remove(job)
        self.completer.record(Outcome.dead(job, None, DeadReason.CANCELLED, ErrorEntry.of(
            job.attempts, self.state.worker_id, "Cancelled", "cancelled before it started")))
        if job.lock_key is not None:
            self.completer.unlock(job.id)
        return True

    def threads_busy(self) -> bool:
        # Not the asyncio tasks: cancel_all() ends those at once, while the
        # threads running their sync handlers go on (and would keep the
        # process alive at exit, since Python joins pool threads).
        with self._busy_lock:
            return self._busy_threads > 0 or self.runner.busy > 0

    def _in_thread(self, call: Callable[[], Any]) -> Any:
        with self._busy_lock:
            self._busy_threads += 1
        try:
            return call()
        finally:
            with self._busy_lock:
                self._busy_threads -= 1

    def close(self) -> None:
        self.runner.close()
        self.threads.shutdown(wait=False, cancel_futures=True)

    def _refused(self, job: ClaimedJob, task: Task | None) -> Outcome | None:
        """The outcome of an attempt that does not call the handler, if this is one."""
        if task is None:
            return Outcome.dead(job, None, DeadReason.UNKNOWN_TASK, ErrorEntry.of(
                job.attempts, self.state.worker_id, "UnknownTask",
                f"no task named {job.task!r} is registered in this worker"))
        if job.version > task.version:
            # Enqueued by newer code than this worker runs (a rolling deploy):
            # its args may not fit this handler. Handed back, the attempt not
            # counted, so it waits for a worker that knows its version.
            if (task.name, job.version) not in self._newer_seen:
                self._newer_seen.add((task.name, job.version))
                self.log.warning("job.newer_version", job_id=job.id, task=job.task,
                                 version=job.version, known=task.version,
                                 note="released for a worker that knows this version")
            return Outcome.released(job, NEWER_VERSION_DELAY)
        if job.cancel_requested:
            # Cancelled while it was running before and then went back to the
            # queue (a retry, a shutdown): honour the cancel instead of running.
            return Outcome.dead(job, None, DeadReason.CANCELLED, ErrorEntry.of(
                job.attempts, self.state.worker_id, "Cancelled",
                "cancelled before this attempt started"))
        return None

    def _failed(self, job: ClaimedJob, task: Task, exc: BaseException,
                started: float) -> Outcome:
        duration = time.monotonic() - started
        if job.id in self.cancel_requested:
            # A handler that stops on ctx.cancelled by raising (a sync one
            # cannot be interrupted otherwise) was cancelled, not failed: a
            # retry would run the job the operator cancelled again.
            return Outcome.dead(job, duration, DeadReason.CANCELLED,
                                ErrorEntry.of_exception(job.attempts, self.state.worker_id, exc))
        outcome = task.retry.outcome(job, exc, duration, self.state.worker_id)
        if isinstance(exc, HandlerProcessDied) and outcome.kind is Kind.DEAD:
            # Its process died under it (a segfault, the OOM killer, os._exit):
            # say so, whatever the retry policy made of the error.
            return outcome._replace(reason=DeadReason.CRASHED)
        return outcome

    async def _attempt(self, job: ClaimedJob, ctx: JobContext, task: Task | None) -> Outcome:
        """The one Outcome of this attempt (CancelledError: shutdown, none), in the
        attempt's span when tracing is on."""
        if not tracing.active():
            return await self._attempt_untraced(job, ctx, task)
        with tracing.processing(job) as span:
            return tracing.finished(span, await self._attempt_untraced(job, ctx, task))

    async def _attempt_untraced(self, job: ClaimedJob, ctx: JobContext,
                                task: Task | None) -> Outcome:
        started = self.lifecycle.started(job)  # binds the job's log context to this task
        refused = self._refused(job, task)
        if refused is not None:
            return refused
        assert task is not None  # refused otherwise
        try:
            job.args = task.upgraded(job.args, job.version)  # as is when current
            if task.transactional:
                return await self._transact(task, job, ctx, started)
            value = await self._call(task, job, ctx)
        except asyncio.CancelledError:
            if job.id not in self.cancel_requested:
                raise  # shutdown: no outcome, the job is released
            return Outcome.dead(job, time.monotonic() - started, DeadReason.CANCELLED,
                                ErrorEntry.of(job.attempts, self.state.worker_id, "Cancelled",
                                              "cancelled while running"))
        except BaseException as exc:  # noqa: BLE001 - any handler failure is the job's outcome
            return self._failed(job, task, exc, started)
        return self._succeeded(job, task, ctx, value, started)

    def _succeeded(self, job: ClaimedJob, task: Task, ctx: JobContext, value: Any,
                   started: float, committed: bool = False) -> Outcome:
        """The success of an attempt that returned ``value``: its result encoded, or a
        failed attempt if it cannot be stored (ResultError: running it again would
        return the same)."""
        duration = time.monotonic() - started
        result = None
        # Kept for history, or for the workflow nodes that wait for this one (their
        # inputs are stored on the edges, whatever history keeps).
        if task.result and value is not None and (task.keep > 0 or job.workflow_id is not None):
            try:
                result = encode_result(value, self.result_limit)
            except PayloadError as exc:
                error = ResultError(f"{exc} (declare the task with result=False to keep none)")
                return self._failed(job, task, error, started)
        return Outcome.succeeded(job, duration, result, task.keep, ctx.last_progress, committed)

    # -- transactional handlers ------------------------------------------------------------

    async def _transact(self, task: Task, job: ClaimedJob, ctx: JobContext,
                        started: float) -> Outcome:
        """An async (or timed sync) transactional handler: its writes and the job's ack
        commit together, or roll back together."""
        tx = self.transactions
        assert tx is not None  # built whenever a task is transactional
        if not task.is_async:
            # A sync one with a timeout: a thread (a forked child could not use the
            # connection), told through ctx.cancelled when time is up.
            outcome: Outcome = await self._call_thread_with_timeout(functools.partial(
                self._transact_sync, task, job, ctx, started), task, job, ctx)
            return outcome
        async with tx.aio.borrow() as conn:
            ctx.conn, ctx._orm = conn, tx.orm
            try:
                value = await self._call(task, job, ctx)
                outcome = self._succeeded(job, task, ctx, value, started, committed=True)
                if outcome.kind is not Kind.SUCCEEDED:
                    return outcome  # the result cannot be stored: rolled back
                try:
                    await tx.aio.commit(conn, tx.ack(outcome))
                except LeaseLostError:
                    return outcome._replace(committed=False).lost(None)
                return outcome
            finally:
                for close in ctx._closers:  # SQLAlchemy sessions, before the pool has it back
                    with contextlib.suppress(Exception):
                        await close()

    def _transact_sync(self, task: Task, job: ClaimedJob, ctx: JobContext,
                       started: float) -> Outcome:
        """:meth:`_transact` of a sync handler, in its thread."""
        tx = self.transactions
        assert tx is not None
        try:
            with tx.sync.borrow() as conn:
                ctx.conn, ctx._orm = conn, tx.orm
                try:
                    value = task.fn(ctx, **job.args) if task.pass_context else task.fn(**job.args)
                    outcome = self._succeeded(job, task, ctx, value, started, committed=True)
                    if outcome.kind is not Kind.SUCCEEDED:
                        return outcome
                    if ctx.cancelled:
                        raise HandlerTimeoutError("stopped before its commit: the worker asked "
                                                  "it to stop (a timeout, a cancel)")
                    try:
                        tx.sync.commit(conn, tx.ack(outcome))
                    except LeaseLostError:
                        return outcome._replace(committed=False).lost(None)
                    return outcome
                finally:
                    for close in ctx._closers:
                        with contextlib.suppress(Exception):
                            close()
        except BaseException as exc:  # noqa: BLE001 - any handler failure is the job's outcome
            return self._failed(job, task, exc, started)

    def _attempt_in_thread(self, job: ClaimedJob, ctx: JobContext, task: Task) -> Outcome:
        """:meth:`_attempt` of a sync handler, in a pool thread (in a copy of the
        submitting context: the job's log context stays with the job)."""
        if not tracing.active():
            return self._attempt_in_thread_untraced(job, ctx, task)
        with tracing.processing(job) as span:  # current in this thread, for the handler
            return tracing.finished(span, self._attempt_in_thread_untraced(job, ctx, task))

    def _attempt_in_thread_untraced(self, job: ClaimedJob, ctx: JobContext,
                                    task: Task) -> Outcome:
        started = self.lifecycle.started(job)
        refused = self._refused(job, task)
        if refused is not None:
            return refused
        try:
            job.args = task.upgraded(job.args, job.version)  # as is when current
            if task.transactional:
                return self._transact_sync(task, job, ctx, started)
            value = task.fn(ctx, **job.args) if task.pass_context else task.fn(**job.args)
        except BaseException as exc:  # noqa: BLE001 - any handler failure is the job's outcome
            return self._failed(job, task, exc, started)
        return self._succeeded(job, task, ctx, value, started)

    async def _call(self, task: Task, job: ClaimedJob, ctx: JobContext) -> Any:
        """The handler's return value (it raises what the handler raised)."""
        args = job.args
        if task.executor == "process":
            assert self.processes is not None  # built whenever a task has executor="process"
            try:
                return await self.processes.run(task, args, ctx, task.timeout,
                                                functools.partial(self._child_progress, ctx))
            except asyncio.TimeoutError:
                raise HandlerTimeoutError(f"timed out after {task.timeout:g}s (process killed)") \
                    from None
        if task.is_async:
            coro = task.fn(ctx, **args) if task.pass_context else task.fn(**args)
            if task.timeout is None:
                return await coro
            try:
                return await asyncio.wait_for(coro, task.timeout)
            except asyncio.TimeoutError:
                raise HandlerTimeoutError(f"timed out after {task.timeout:g}s") from None
        # Sync handlers without a timeout go to the thread runner (submit); here
        # only those with one.
        assert task.timeout is not None
        call = (functools.partial(task.fn, ctx, **args) if task.pass_context
                else functools.partial(task.fn, **args))
        if fork_available():
            # A thread cannot be killed; a child process can. Past the timeout
            # the child is SIGKILLed, so the job can never run twice at once.
            try:
                return await run_forked(call, task.timeout)
            except asyncio.TimeoutError:
                raise HandlerTimeoutError(f"timed out after {task.timeout:g}s (process killed)") \
                    from None
        return await self._call_thread_with_timeout(call, task, job, ctx)

    def _child_progress(self, ctx: JobContext, progress: str | None) -> None:
        """A handler in a child process reported progress: write it as for any job."""
        ctx.last_progress = progress
        if self.progress is not None:
            self.progress.report(ctx)

    def _in_pool(self, call: Callable[[], Any]) -> asyncio.Future[Any]:
        # run_in_executor does not carry context variables into the thread
        # (asyncio.to_thread does): copy them, so the handler's structlog lines
        # carry the job's id and correlation id.
        return asyncio.get_running_loop().run_in_executor(
            self.threads, functools.partial(contextvars.copy_context().run,
                                            self._in_thread, call))

    async def _call_thread_with_timeout(self, call: Callable[[], Any], task: Task,
                                        job: ClaimedJob, ctx: JobContext) -> Any:
        """Where fork is unavailable (or a transactional handler needs its connection):
        time out a thread that cannot be killed."""
        assert task.timeout is not None
        future = self._in_pool(call)
        started = time.monotonic()
        try:
            return await asyncio.wait_for(asyncio.shield(future), task.timeout)
        except asyncio.TimeoutError:
            # Tell the handler through ctx.cancelled and keep the job (its slot
            # and its lease) until the thread returns, so the job is never
            # running twice at once; the attempt counts as timed out.
            ctx._cancel.set()
            self.log.warning("job.timeout", job_id=job.id, task=job.task, timeout=task.timeout)
            late: Any = None
            with contextlib.suppress(BaseException):  # the timeout is the outcome
                late = await future
            if isinstance(late, Outcome) and late.committed:
                return late  # a transactional handler committed just before: that stands
            raise HandlerTimeoutError(
                f"timed out after {task.timeout:g}s (handler returned after "
                f"{time.monotonic() - started:.1f}s)") from None
