"""Log lines from a worker's threads and its forked children arrive whole.

A worker, its handler threads and its forked handler processes all write JSON
lines to one inherited stderr. A line written in two pieces (text, then the
newline, as ``print`` does on an unbuffered stream) can have another
process's line land between them: two records on one line, neither parseable,
both lost to whoever reads the log (journald, a collector, our own tests).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import textwrap

# Three writers on one pipe: the main thread, another thread, a forked child
# (which frees the write lock the fork may have copied held, as the worker's
# children do). Lines stay under PIPE_BUF, the size a pipe write is atomic to.
SCRIPT = textwrap.dedent("""
    import os, sys, threading
    from jobqueue import log
    from jobqueue.worker.forked import in_child

    log.configure(level="info", json=True, force=True)
    logger = log.get_logger("test")

    def spam(who):
        for i in range(LINES):
            logger.info("line", who=who, i=i)

    thread = threading.Thread(target=spam, args=("thread",))
    thread.start()
    pid = os.fork()
    if pid == 0:
        in_child(os.getppid())
        spam("child")
        os._exit(0)
    spam("main")
    thread.join()
    os.waitpid(pid, 0)
""")
LINES = 20_000


def test_lines_from_threads_and_forked_children_never_interleave() -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}  # the worker's tests and systemd run so
    done = subprocess.run([sys.executable, "-c", f"LINES = {LINES}\n{SCRIPT}"], env=env,
                          capture_output=True, text=True, timeout=120, check=True)
    lines = done.stderr.splitlines()
    records = []
    for line in lines:
        with contextlib.suppress(ValueError):
            records.append(json.loads(line))
    assert len(records) == len(lines), f"{len(lines) - len(records)} lines came torn"
    seen = {(r["who"], r["i"]) for r in records}
    assert len(seen) == 3 * LINES
