"""The executor: runs handlers, at most ``concurrency`` at a time.

Async handlers run on the worker's event loop; sync handlers run in a thread
pool of the same size. Each job runs in its own asyncio task, and whatever a
handler raises becomes that job's outcome only: it never reaches the loop or
another job.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from jobqueue.tasks import Decision, JobContext, Task
from jobqueue.worker.completer import Completer
from jobqueue.worker.forked import fork_available, run_forked
from jobqueue.worker.jobs import ClaimedJob, error_entry, exception_name
from jobqueue.worker.lifecycle import Lifecycle


class HandlerTimeoutError(TimeoutError):
    """A handler ran past its task's ``timeout``.

    Its name ends in ``TimeoutError`` because it is recorded as the attempt's
    error type: a search of errors (or dead jobs) for "TimeoutError" must find
    handler timeouts too.
    """



class Executor:
    def __init__(
        self,
        tasks: dict[str, Task],
        completer: Completer,
        worker_id: str,
        concurrency: int,
        log: Any,
        on_slot_free: Callable[[], None],
        lifecycle: Lifecycle | None = None,
    ) -> None:
        self.tasks = tasks
        # Lifecycle events, the handler's log context and metrics, per job.
        self.lifecycle = lifecycle or Lifecycle(log)
        self.completer = completer
        self.worker_id = worker_id
        self.concurrency = concurrency
        self.log = log
        self.on_slot_free = on_slot_free
        self.threads = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="jobqueue")
        self.inflight: dict[int, tuple[asyncio.Task[None], JobContext]] = {}
        self._busy_threads = 0
        self._busy_lock = threading.Lock()
        self._idle = asyncio.Event()
        self._idle.set()
        self.started = 0
        # Jobs an operator cancelled (jobqueue cancel) while they ran.
        self.cancel_requested: set[int] = set()

    @property
    def free(self) -> int:
        return self.concurrency - len(self.inflight)

    def submit(self, job: ClaimedJob) -> None:
        ctx = JobContext(id=job.id, task=job.task, queue=job.queue, attempt=job.attempts,
                         max_attempts=job.max_attempts, worker_id=self.worker_id)
        task = asyncio.get_running_loop().create_task(self._run(job, ctx))
        self.inflight[job.id] = (task, ctx)
        self._idle.clear()
        self.started += 1
        task.add_done_callback(functools.partial(self._done, job))

    def _done(self, job: ClaimedJob, task: asyncio.Task[None]) -> None:
        self.inflight.pop(job.id, None)
        self.cancel_requested.discard(job.id)
        if job.lock_key is not None and not task.cancelled():
            # An outcome was recorded: free the key with it. (A task cancelled
            # by shutdown has none; its job and key are released with the rest.)
            self.completer.unlock(job.id)
        if not self.inflight:
            self._idle.set()
        self.on_slot_free()

    async def wait_idle(self, timeout: float | None) -> bool:
        """Wait until no job is in flight; False if ``timeout`` passed first."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        return True

    async def cancel_all(self) -> int:
        """Shutdown past the grace period: stop what can be stopped.

        Async handlers are cancelled; sync handlers are told through
        ``ctx.cancelled`` (a thread cannot be interrupted). Neither records an
        outcome: the worker releases their jobs back to the queue.
        """
        pending = list(self.inflight.values())
        for task, ctx in pending:
            ctx._cancel.set()
            task.cancel()
        if pending:
            await asyncio.wait([t for t, _ in pending], timeout=1.0)
        return len(pending)

    def cancel(self, job_id: int) -> bool:
        """An operator cancelled this running job: stop it if we run it.

        Async handlers are cancelled; a sync handler in a child process is
        killed; one in a thread sees ``ctx.cancelled`` (and if it returns
        normally anyway, it succeeded). A stopped job is dead with reason
        ``cancelled``.
        """
        entry = self.inflight.get(job_id)
        if entry is None:
            return False
        task, ctx = entry
        self.cancel_requested.add(job_id)
        ctx._cancel.set()
        handler = self.tasks.get(ctx.task)
        if handler is None or handler.is_async or handler.timeout is not None:
            task.cancel()  # async: CancelledError in the handler; forked: kills the child
        return True

    def threads_busy(self) -> bool:
        # Not the asyncio tasks: cancel_all() ends those at once, while the
        # threads running their sync handlers go on (and would keep the
        # process alive at exit, since Python joins pool threads).
        with self._busy_lock:
            return self._busy_threads > 0

    def _in_thread(self, call: Callable[[], Any]) -> Any:
        with self._busy_lock:
            self._busy_threads += 1
        try:
            return call()
        finally:
            with self._busy_lock:
                self._busy_threads -= 1

    def close(self) -> None:
        self.threads.shutdown(wait=False, cancel_futures=True)

    async def _run(self, job: ClaimedJob, ctx: JobContext) -> None:
        started = self.lifecycle.started(job)  # binds the job's log context to this task
        task = self.tasks.get(job.task)
        if task is None:
            self.lifecycle.dead(job, started, "unknown_task")
            self.completer.dead(job.id, "unknown_task", error_entry(
                attempt=job.attempts, worker_id=self.worker_id, type_name="UnknownTask",
                message=f"no task named {job.task!r} is registered in this worker"),
                queue=job.queue)
            return
        if job.cancel_requested:
            # Cancelled while it was running before and then went back to the
            # queue (a retry, a shutdown): honour the cancel instead of running.
            self.lifecycle.dead(job, started, "cancelled")
            self.completer.dead(job.id, "cancelled", error_entry(
                attempt=job.attempts, worker_id=self.worker_id, type_name="Cancelled",
                message="cancelled before this attempt started"), queue=job.queue)
            return
        try:
            await self._call(task, job, ctx)
        except asyncio.CancelledError:
            if job.id not in self.cancel_requested:
                raise  # shutdown: no outcome, the job is released
            self.lifecycle.dead(job, started, "cancelled")
            self.completer.dead(job.id, "cancelled", error_entry(
                attempt=job.attempts, worker_id=self.worker_id, type_name="Cancelled",
                message="cancelled while running"), queue=job.queue)
        except BaseException as exc:  # noqa: BLE001 - any handler failure is the job's outcome
            if job.id in self.cancel_requested:
                # A handler that stops on ctx.cancelled by raising (a sync one
                # cannot be interrupted otherwise) was cancelled, not failed: a
                # retry would run the job the operator cancelled again.
                self.lifecycle.dead(job, started, "cancelled", exc)
                self.completer.dead(job.id, "cancelled", error_entry(
                    attempt=job.attempts, worker_id=self.worker_id,
                    type_name=exception_name(exc), message=str(exc), exc=exc), queue=job.queue)
                return
            self._failed(task, job, exc, started)
        else:
            self.lifecycle.succeeded(job, started)
            self.completer.succeeded(job.id, job.queue)

    async def _call(self, task: Task, job: ClaimedJob, ctx: JobContext) -> None:
        args = job.args
        if task.is_async:
            coro = task.fn(ctx, **args) if task.pass_context else task.fn(**args)
            if task.timeout is None:
                await coro
                return
            try:
                await asyncio.wait_for(coro, task.timeout)
            except asyncio.TimeoutError:
                raise HandlerTimeoutError(f"timed out after {task.timeout:g}s") from None
            return
        call = (functools.partial(task.fn, ctx, **args) if task.pass_context
                else functools.partial(task.fn, **args))
        if task.timeout is None:
            # run_in_executor does not carry context variables into the thread
            # (asyncio.to_thread does): copy them, so the handler's structlog
            # lines carry the job's id and correlation id.
            await asyncio.get_running_loop().run_in_executor(
                self.threads, functools.partial(contextvars.copy_context().run,
                                                self._in_thread, call))
            return
        if fork_available():
            # A thread cannot be killed; a child process can. Past the timeout
            # the child is SIGKILLed, so the job can never run twice at once.
            try:
                await run_forked(call, task.timeout)
            except asyncio.TimeoutError:
                raise HandlerTimeoutError(f"timed out after {task.timeout:g}s (process killed)") \
                    from None
            return
        await self._call_thread_with_timeout(call, task, job, ctx)

    async def _call_thread_with_timeout(self, call: Callable[[], Any], task: Task,
                                        job: ClaimedJob, ctx: JobContext) -> None:
        """Where fork is unavailable: time out a thread that cannot be killed."""
        assert task.timeout is not None
        future = asyncio.get_running_loop().run_in_executor(
            self.threads, functools.partial(contextvars.copy_context().run,
                                            self._in_thread, call))
        started = time.monotonic()
        try:
            await asyncio.wait_for(asyncio.shield(future), task.timeout)
        except asyncio.TimeoutError:
            # Tell the handler through ctx.cancelled and keep the job (its slot
            # and its lease) until the thread returns, so the job is never
            # running twice at once; the attempt counts as timed out.
            ctx._cancel.set()
            self.log.warning("job.timeout", job_id=job.id, task=job.task, timeout=task.timeout)
            with contextlib.suppress(BaseException):  # the timeout is the outcome
                await future
            raise HandlerTimeoutError(
                f"timed out after {task.timeout:g}s (handler returned after "
                f"{time.monotonic() - started:.1f}s)") from None

    def _failed(self, task: Task, job: ClaimedJob, exc: BaseException,
                started: float | None = None) -> None:
        decision, reason = task.retry.decide(exc, job.attempts, job.max_attempts)
        entry = error_entry(attempt=job.attempts, worker_id=self.worker_id,
                            type_name=exception_name(exc), message=str(exc), exc=exc)
        started = time.monotonic() if started is None else started
        if decision is Decision.RETRY:
            delay = task.retry.delay_for(exc, job.attempts)
            self.lifecycle.retrying(job, started, exc, delay)
            self.completer.retry(job.id, job.attempts, delay, entry, queue=job.queue)
        else:
            self.lifecycle.dead(job, started, reason, exc)
            self.completer.dead(job.id, reason, entry, queue=job.queue)
