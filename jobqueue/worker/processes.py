"""The process pool: handlers of ``executor="process"`` tasks, in long-lived child processes.

Python threads share one interpreter lock, so CPU-bound handlers (resizing
images, rendering PDFs) run one at a time however many threads there are; a
handler that segfaults, runs out of memory or calls ``os._exit`` takes its
whole process with it. Such tasks run instead in a pool of ``size`` children,
forked from the worker once the app is loaded (so they inherit its handlers:
nothing is pickled but args, results and errors), each serving one job at a
time over a pipe.

- A child that dies mid-job fails that attempt with :class:`HandlerProcessDied`
  (reason ``crashed`` if it was the last attempt) and is replaced; the worker
  goes on.
- Past the task's timeout, and on a cancel or a shutdown past the grace
  period, the child is SIGKILLed: a job never runs on after its worker gave it
  up, so it can never run twice at once.
- Recycling: a child leaves after ``max_jobs`` jobs or once its resident memory
  passes ``max_memory`` bytes, right after reporting a job (never during one),
  and the next job gets a fresh child. That is the cure for handlers that leak.

Children ignore SIGINT and SIGTERM: a Ctrl-C or a service manager signals the
whole process group, and the worker, not its children, decides what a stop
means (finish within the grace period, then kill). They die with the worker
(PR_SET_PDEATHSIG), even when it is SIGKILLed.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import multiprocessing
import os
import resource
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from jobqueue.config import DEFAULT_PROGRESS_INTERVAL
from jobqueue.tasks import JobContext, Task
from jobqueue.worker.forked import HandlerProcessDied, call_message, died, in_child, unpack


def resident_bytes() -> int:
    """This process's resident set size now (Linux), else its peak."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@dataclass(frozen=True)
class Request:
    """One job for a child: what the handler is called with."""

    task: str
    args: dict[str, Any]
    #: The JobContext fields a pass_context handler sees (None: it takes none).
    context: dict[str, Any] | None


@dataclass
class Limits:
    """When a child makes way for a fresh one."""

    max_jobs: int | None = None
    max_memory: int | None = None  # bytes of RSS

    def reached(self, served: int, rss: int) -> bool:
        return ((self.max_jobs is not None and served >= self.max_jobs)
                or (self.max_memory is not None and rss > self.max_memory))


class _Progress:
    """A child's ``ctx.progress()`` on its way to the parent, which writes it as for any
    job: sent at most every ``DEFAULT_PROGRESS_INTERVAL`` (a handler may call it in a
    tight loop), the last value always with the job's answer."""

    def __init__(self, out: Connection) -> None:
        self.out = out
        self.sent_at = 0.0
        self.unsent: str | None = None

    def report(self, ctx: JobContext) -> None:
        now = time.monotonic()
        if now - self.sent_at >= DEFAULT_PROGRESS_INTERVAL:
            self.sent_at, self.unsent = now, None
            self.out.send(("progress", ctx.last_progress))
        else:
            self.unsent = ctx.last_progress


def _handler_call(task: Task, request: Request, progress: _Progress) -> Callable[[], Any]:
    ctx = None
    if request.context is not None:
        ctx = JobContext(**request.context, _on_progress=progress.report)
    args = request.args
    if task.is_async:
        fn = task.fn
        return lambda: asyncio.run(fn(ctx, **args) if ctx is not None else fn(**args))
    return (functools.partial(task.fn, ctx, **args) if ctx is not None
            else functools.partial(task.fn, **args))


def _serve(tasks: Mapping[str, Task], conn: Connection, parent: int, limits: Limits) -> None:
    """A child's life: jobs in, one message each out, until told to stop or recycled."""
    in_child(parent)  # signals too: the worker alone ends its children
    served = 0
    try:
        while True:
            try:
                request = conn.recv()
            except EOFError:
                break
            if request is None:
                break
            progress = _Progress(conn)
            kind, payload = call_message(_handler_call(tasks[request.task], request, progress))
            if progress.unsent is not None:
                conn.send(("progress", progress.unsent))
            served += 1
            # Read once, and only where a limit or the recycling log needs it.
            rss = resident_bytes() if limits.max_memory is not None else 0
            retire = limits.reached(served, rss)
            if retire and not rss:
                rss = resident_bytes()
            conn.send((kind, payload, retire, rss))
            if retire:
                break
    finally:
        with contextlib.suppress(Exception):
            conn.close()
        os._exit(0)


@dataclass(eq=False)  # compared (and hashed) by identity: one per process
class Child:
    """The worker's side of one child process."""

    process: BaseProcess
    conn: Connection
    jobs: int = 0
    readable: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def pid(self) -> int | None:
        return self.process.pid


class ProcessPool:
    """At most ``size`` children running handlers of ``tasks``, one job each at a time."""

    def __init__(self, tasks: Mapping[str, Task], size: int, log: Any, *,
                 limits: Limits | None = None) -> None:
        if size < 1:
            raise ValueError("a process pool needs at least one process")
        self.tasks = tasks
        self.size = size
        self.log = log
        self.limits = limits or Limits()
        self._slots = asyncio.Semaphore(size)
        self._idle: list[Child] = []
        self._busy: set[Child] = set()
        self._context = multiprocessing.get_context("fork")
        self._closing = False
        #: Children replaced, by why: ``crashed`` (died without answering, busy or
        #: idle), ``killed`` (by the worker: a timeout or a cancel), ``recycled``
        #: (--max-jobs-per-child, --max-memory). Exported as a metric.
        self.replaced: collections.Counter[str] = collections.Counter()

    def start(self) -> None:
        """Fork the children now, while the worker is starting, not on its first job."""
        while len(self._idle) < self.size:
            self._idle.append(self._spawn())

    def _spawn(self) -> Child:
        parent_end, child_end = self._context.Pipe(duplex=True)
        process = self._context.Process(
            target=_serve, args=(self.tasks, child_end, os.getpid(), self.limits),
            name="jobqueue-process", daemon=True)
        process.start()
        child_end.close()
        return Child(process, parent_end)

    @property
    def pids(self) -> list[int]:
        return [c.pid for c in (*self._idle, *self._busy) if c.pid is not None]

    async def run(self, task: Task, args: dict[str, Any], ctx: JobContext,
                  timeout: float | None, on_progress: Callable[[str | None], None]) -> Any:
        """The handler's return value, computed in a child; what it raised is raised
        here, HandlerProcessDied if the child died, TimeoutError past ``timeout``."""
        context = None
        if task.pass_context:
            context = {"id": ctx.id, "task": ctx.task, "queue": ctx.queue,
                       "attempt": ctx.attempt, "max_attempts": ctx.max_attempts,
                       "worker_id": ctx.worker_id, "parent_results": ctx.parent_results}
        async with self._slots:
            child = self._idle.pop() if self._idle else self._spawn()
            request = Request(task.name, args, context)
            try:
                child.conn.send(request)
            except OSError:
                # It died while idle (killed from outside): the job never reached
                # it, so a fresh child takes the job, and nothing was attempted.
                await self._end(child)
                self.replaced["crashed"] += 1
                child = self._spawn()
                child.conn.send(request)
            self._busy.add(child)
            child.jobs += 1
            ended: str | None = "killed"  # unless it answers, or is found dead
            try:
                kind, payload, retire, rss = await asyncio.wait_for(
                    self._answer(child, on_progress), timeout)
                ended = "recycled" if retire else None
                if retire:
                    self.log.info("process.recycled", pid=child.pid, jobs=child.jobs,
                                  rss_mb=round(rss / 2**20, 1))
                return unpack(kind, payload)
            except HandlerProcessDied:
                ended = "crashed"
                raise
            finally:
                self._busy.discard(child)
                if ended is None:
                    self._idle.append(child)
                else:
                    # Timed out, cancelled, crashed or retiring: it is not reused,
                    # and a fresh one takes its place now, not on the next job.
                    await self._end(child)
                    if not self._closing:
                        self.replaced[ended] += 1
                        self._idle.append(self._spawn())

    async def _answer(self, child: Child, on_progress: Callable[[str | None], None]
                      ) -> tuple[str, Any, bool, int]:
        # Watched only while it runs a job: readiness is level-triggered, and the
        # pipe of a child that died idle would wake the loop without end.
        loop = asyncio.get_running_loop()
        loop.add_reader(child.conn.fileno(), child.readable.set)
        try:
            return await self._read(child, on_progress)
        finally:
            with contextlib.suppress(Exception):
                loop.remove_reader(child.conn.fileno())

    async def _read(self, child: Child, on_progress: Callable[[str | None], None]
                    ) -> tuple[str, Any, bool, int]:
        while True:
            await child.readable.wait()
            child.readable.clear()
            while child.conn.poll():
                try:
                    message = child.conn.recv()
                except (EOFError, OSError):
                    await self._reap(child)
                    error = died(child.process.exitcode)
                    self.log.warning("process.died", pid=child.pid,
                                     exitcode=child.process.exitcode, error=str(error))
                    raise error from None
                if message[0] == "progress":
                    on_progress(message[1])
                    continue
                kind, payload, retire, rss = message
                return kind, payload, retire, rss

    async def _reap(self, child: Child) -> None:
        await asyncio.get_running_loop().run_in_executor(None, child.process.join, 5)

    async def _end(self, child: Child) -> None:
        if child.process.is_alive():
            with contextlib.suppress(Exception):
                child.process.kill()
        await self._reap(child)
        with contextlib.suppress(Exception):
            child.conn.close()
        with contextlib.suppress(Exception):
            child.process.close()

    def draining(self) -> None:
        """The worker is stopping: no job will start, so no child is replaced."""
        self._closing = True

    async def close(self) -> None:
        """Stop every child: idle ones are told to leave, busy ones are killed."""
        self._closing = True
        idle, self._idle = self._idle, []
        for child in idle:
            with contextlib.suppress(Exception):
                child.conn.send(None)
        for child in [*idle, *self._busy]:
            await self._end(child)
        self._busy.clear()
