"""``jobqueue worker --supervise``: keep a worker running, fresh when it recycles itself.

The supervisor runs no jobs and opens no connection. It starts the very same
command without ``--supervise`` as its child, marked by ``$JOBQUEUE_SUPERVISED``
so that the child applies ``--max-jobs-per-child`` and ``--max-memory`` to itself
(:mod:`jobqueue.worker.recycler`), and then:

- a child that exits with :data:`~jobqueue.protocol.RECYCLE_EXIT_CODE` stopped
  gracefully to be recycled: the next one starts at once;
- a child killed by a signal (the OOM killer, a SIGKILL) is started again after
  a pause that doubles up to 30 s, so a worker that dies at once does not spin;
- any other exit (0 after a SIGTERM or a --burst drain, 1 for a bad --app) is
  the supervisor's own exit status, for systemd (or a person) to see.

SIGTERM and SIGINT are passed to the child once each; the child runs in a
session of its own, so a Ctrl-C in a terminal reaches it once, through the
supervisor, not twice (a second signal means "leave now" to a worker). The
child gets SIGTERM if the supervisor dies (PR_SET_PDEATHSIG), and stops gracefully.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import signal
import subprocess
import sys
import time
from types import FrameType

from jobqueue.log import configure, get_logger
from jobqueue.protocol import RECYCLE_EXIT_CODE

#: Set in the environment of a supervised worker.
SUPERVISED_ENV = "JOBQUEUE_SUPERVISED"
_FLAG = "--supervise"
_MAX_PAUSE = 30.0


def supervised() -> bool:
    return os.environ.get(SUPERVISED_ENV) == "1"


def child_command() -> list[str]:
    """This process's own command line (interpreter, ``-m`` and all) without --supervise."""
    argv = list(getattr(sys, "orig_argv", None) or [sys.executable, *sys.argv])
    return [arg for arg in argv if arg != _FLAG]


def _term_with_parent() -> None:
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def supervise(command: list[str]) -> int:
    """Run ``command`` until it exits for good; its exit status."""
    configure()  # the worker's log format: one stream of JSON lines from both
    log = get_logger("jobqueue.supervisor")
    env = {**os.environ, SUPERVISED_ENV: "1"}
    child: subprocess.Popen[bytes] | None = None
    stopping = False

    def forward(sig: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        if child is not None and child.poll() is None:
            child.send_signal(sig)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    pause, starts = 1.0, 0
    try:
        while True:
            child = subprocess.Popen(command, env=env, start_new_session=True,
                                     preexec_fn=_term_with_parent)
            starts += 1
            log.info("supervisor.started", pid=child.pid, start=starts)
            code = child.wait()
            if stopping:
                return code if code >= 0 else 128 - code
            if code == RECYCLE_EXIT_CODE:
                log.info("supervisor.recycled", pid=child.pid, note="starting a fresh worker")
                pause = 1.0
                continue
            if code < 0:
                log.warning("supervisor.worker_killed", pid=child.pid,
                            signal=signal.Signals(-code).name, restart_in=pause)
                time.sleep(pause)
                pause = min(pause * 2, _MAX_PAUSE)
                if stopping:
                    return 128 - code
                continue
            return code
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
