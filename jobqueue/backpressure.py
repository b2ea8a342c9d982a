"""Backpressure, the pure half: which queues have a ``max_ready``, and what an enqueue
into a full one does.

A queue with ``max_ready`` (``app.queues.set_limits(q, max_ready=N)``) pushes
back once it already holds N ready jobs (what ``stats`` calls queued: due now,
not scheduled for later): with ``reject_when_full`` the enqueue raises
:class:`~jobqueue.errors.QueueFull` before its insert is sent, so nothing is
enqueued and the caller's transaction stays usable; otherwise the jobs go in,
``queue.over_limit`` is logged (at most once per queue every
``OVER_LIMIT_LOG_INTERVAL`` seconds in a process) and :attr:`Backpressure.counts`
grows by the number of jobs that went in over the limit.

What it costs: most queues have no limit, and an enqueue into one of them must
not pay a round trip to learn so. :class:`Backpressure` keeps the names of the
queues that have a limit, read with the check's own statement
(``backpressure`` in ``sql/queries.sql``) and trusted for ``BACKPRESSURE_TTL``
seconds. An enqueue whose queues are all outside that set while it is fresh
runs nothing more than its insert; one into a limited queue, or the first one
after the set went stale, runs that one statement first on the enqueue's own
connection (the caller's transaction, if any): it reads the limits afresh and
counts the ready jobs of the batch's limited queues, each no further than its
``max_ready``. So a limit cleared anywhere is lifted at the next enqueue; one
set in another process is enforced within the TTL, and one set through this
app's ``queues`` at once (:meth:`Backpressure.invalidate`).

The limit is soft: the count is a snapshot, so producers enqueueing at the same
time into a queue one job short of full all pass, and each puts in what it
inserts between its check and its commit. It bounds a backlog; it is not an
exact cap.

A producer granted its rights before backpressure existed may not read the
queues' limits, and a statement refused for it would poison the caller's
transaction. So the first check asks the catalog whether it may (a question
that cannot fail); without the rights enqueue skips the check (logging
``queue.limits_unreadable`` once) and asks again every TTL.

Everything here is state and decisions; the statements and the procedure that
runs them live in :mod:`jobqueue.db.admin`. One object is shared by the threads
and tasks of one app: the cache is replaced whole (one assignment), and the
counters and log times, touched only over a limit, are under a lock.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence

from jobqueue.config import BACKPRESSURE_TTL, OVER_LIMIT_LOG_INTERVAL
from jobqueue.errors import QueueFull
from jobqueue.log import get_logger
from jobqueue.rows import QueueLoad


class Backpressure:
    """``app.backpressure``: the cached limits, the over-limit counters and the verdicts."""

    def __init__(self, ttl: float = BACKPRESSURE_TTL,
                 log_interval: float = OVER_LIMIT_LOG_INTERVAL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self.log_interval = log_interval
        self.clock = clock
        #: The queues with a max_ready, as last read, and when (None: never, or invalidated).
        self.limited: frozenset[str] = frozenset()
        self.read_at: float | None = None
        #: How many times the limits were read (a test's window onto the cache).
        self.reads = 0
        # Whether this role may read the limits (None: not asked yet), and when asked.
        self._readable: bool | None = None
        self._asked_at = 0.0
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._logged_at: dict[str, float] = {}
        self._unlogged: Counter[str] = Counter()

    # -- the cache --------------------------------------------------------------------

    def due(self, queues: Sequence[str]) -> bool:
        """Whether an enqueue into ``queues`` must ask the database first; False on the
        hot path: the set is fresh and none of them is limited."""
        if self._readable is not True:
            return self._readable is None or self._expired(self._asked_at)
        if self.read_at is None or self._expired(self.read_at):
            return True
        return not self.limited.isdisjoint(queues)

    @property
    def readable(self) -> bool:
        """Whether this role is known to be allowed to read the limits (until then,
        the check asks the catalog first)."""
        return self._readable is True

    def set_readable(self, readable: bool) -> None:
        first = self._readable is None
        self._readable, self._asked_at = readable, self.clock()
        if not readable and first:
            get_logger("jobqueue.backpressure").warning(
                "queue.limits_unreadable",
                note="this role may not read the queues' max_ready: enqueue does not check "
                     "it (grant it with `jobqueue migrate --grant-producer ROLE`)")

    def invalidate(self) -> None:
        """Read the limits again at the next enqueue (this app just changed them)."""
        self.read_at = None

    def _expired(self, since: float) -> bool:
        return self.clock() - since >= self.ttl

    # -- the verdict ------------------------------------------------------------------

    def judge(self, loads: Sequence[QueueLoad]) -> list[QueueLoad]:
        """Take in what the check read: the new set of limited queues, and for the
        queues it counted (the batch's) the verdict. Raises QueueFull if one of them
        rejects and is full (the first by name); else the full ones the jobs go into
        anyway."""
        self.limited = frozenset(load.queue for load in loads)
        self.read_at = self.clock()
        self.reads += 1
        full = [load for load in loads
                if load.ready is not None and load.ready >= load.max_ready]
        for load in full:
            if load.reject_when_full:
                raise QueueFull(load.queue, load.max_ready, load.ready or 0)
        return full

    def over_limit(self, full: Sequence[QueueLoad], queues: Sequence[str]) -> None:
        """Count the jobs that went into full queues, and say so (rate-limited)."""
        jobs = Counter(queues)
        now = self.clock()
        log = []
        with self._lock:
            for load in full:
                n = jobs[load.queue]
                self._counts[load.queue] += n
                last = self._logged_at.get(load.queue)
                if last is not None and now - last < self.log_interval:
                    self._unlogged[load.queue] += n
                    continue
                self._logged_at[load.queue] = now
                log.append((load, n, self._unlogged.pop(load.queue, 0)))
        for load, n, unlogged in log:
            # Logged outside the lock: a slow log sink must not hold other producers.
            get_logger("jobqueue.backpressure").warning(
                "queue.over_limit", queue=load.queue, max_ready=load.max_ready,
                ready=load.ready, jobs=n, unlogged_jobs=unlogged,
                note="enqueued anyway (the queue warns when full; "
                     "`jobqueue queue limit --reject` makes it refuse)")

    @property
    def counts(self) -> dict[str, int]:
        """Jobs this process enqueued into a full queue (that warns), per queue."""
        with self._lock:
            return dict(self._counts)
