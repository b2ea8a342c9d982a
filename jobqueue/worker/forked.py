"""Run one sync handler in a forked child process that can be killed.

A thread cannot be stopped from outside, so a sync task with a ``timeout``
runs in a child process instead: past the timeout the child is SIGKILLed and
the attempt fails as a timeout. The child is forked (it inherits the loaded
handler, no pickling of functions) and leaves with ``os._exit`` so it never
runs the parent's cleanup or touches the parent's database sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import multiprocessing
import os
import pickle
import signal
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from jobqueue.errors import ResultError


class HandlerProcessError(Exception):
    """A handler's exception that could not be sent back from its process as itself."""


class HandlerProcessDied(Exception):
    """The handler's process ended without reporting (os._exit, a signal, OOM...)."""


def fork_available() -> bool:
    return "fork" in multiprocessing.get_all_start_methods()


def _die_with_parent(parent: int) -> None:
    """Linux: have the kernel SIGKILL this child when the worker dies (even by SIGKILL),
    so a handler never outlives the worker that owns its job's lease."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def _release_write_locks() -> None:
    """In the child: free the log-writing locks another thread held at the fork.

    Only the forking thread exists in the child; a lock that a handler thread of
    the parent held while it wrote a log line (structlog keeps one per output
    file) would stay locked forever, and the child's first log line would hang
    until its timeout killed it. No other thread is left to use them.
    """
    from structlog import _output

    for lock in list(getattr(_output, "WRITE_LOCKS", {}).values()):
        if lock.locked():
            lock.release()


def call_message(call: Callable[[], Any]) -> tuple[str, Any]:
    """In a child: run ``call`` and say what came of it as a picklable message."""
    try:
        value = call()
        try:
            return ("ok", pickle.dumps(value))
        except Exception as exc:  # noqa: BLE001 - the parent reports it as the attempt's error
            return ("unsendable", f"the handler's result cannot leave its process: {exc}")
    except BaseException as exc:  # noqa: BLE001 - the parent decides what it means
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        try:
            blob = pickle.dumps(exc)
            pickle.loads(blob)
            return ("raised", (blob, tb))
        except Exception:  # noqa: BLE001 - unpicklable exception: send its description
            return ("described", (f"{type(exc).__module__}.{type(exc).__qualname__}",
                                  str(exc), tb))


def in_child(parent: int) -> None:
    """What a forked handler process does first."""
    _die_with_parent(parent)
    _release_write_locks()
    # The worker's event loop gets its signals through a wake-up pipe the child
    # inherited: a signal caught here would be written into it and reach the
    # worker as its own. A terminal's Ctrl-C signals the whole process group, so
    # the worker would count a second SIGINT ("exit now") for every child. The
    # worker alone decides a child's end (it SIGKILLs on timeout and shutdown).
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _child(call: Callable[[], Any], out: Connection, parent: int) -> None:
    in_child(parent)
    message = call_message(call)
    try:
        out.send(message)
    finally:
        out.close()
        os._exit(0)


def died(exitcode: int | None) -> HandlerProcessDied:
    """The error of a handler process that ended without a result."""
    if exitcode is not None and exitcode < 0:
        try:
            how = f"was killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            how = f"was killed by signal {-exitcode}"
    else:
        how = f"exited with code {exitcode}"
    return HandlerProcessDied(f"the handler's process {how} without a result")


def unpack(kind: str, payload: Any) -> Any:
    """In the parent: what a child's message says the call returned (or raise it)."""
    if kind == "ok":
        return pickle.loads(payload)
    if kind == "unsendable":
        raise ResultError(payload)
    if kind == "raised":
        blob, tb = payload
        exc = pickle.loads(blob)
        exc.__notes__ = [*getattr(exc, "__notes__", []), "in the handler's process:\n" + tb]
        raise exc
    type_name, message, tb = payload
    raise HandlerProcessError(f"{type_name}: {message}\n{tb}")


async def run_forked(call: Callable[[], Any], timeout: float) -> Any:
    """Run ``call`` in a child: what it returned; raise what it raised, or TimeoutError
    past ``timeout``."""
    loop = asyncio.get_running_loop()
    ctx = multiprocessing.get_context("fork")
    reader, writer = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(call, writer, os.getpid()), daemon=True)
    proc.start()
    writer.close()
    readable: asyncio.Future[None] = loop.create_future()

    def ready() -> None:
        if not readable.done():
            readable.set_result(None)

    loop.add_reader(reader.fileno(), ready)
    try:
        try:
            await asyncio.wait_for(asyncio.shield(readable), timeout)
        except asyncio.TimeoutError:
            proc.kill()
            raise
        finally:
            loop.remove_reader(reader.fileno())
        try:
            kind, payload = reader.recv()
        except EOFError:
            await loop.run_in_executor(None, proc.join, 5)
            raise died(proc.exitcode) from None
    finally:
        if proc.is_alive() and not readable.done():
            proc.kill()
        await loop.run_in_executor(None, proc.join, 5)
        with contextlib.suppress(Exception):
            reader.close()
        with contextlib.suppress(Exception):
            proc.close()
    return unpack(kind, payload)
