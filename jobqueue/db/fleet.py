"""Procedures of the fleet: worker registration, heartbeats, the leader's round.

Leadership is a transaction-scoped advisory lock taken at the start of each
round: released at COMMIT, so a leader that dies mid-round frees it at once,
and it works through PgBouncer's transaction mode, where a session-level lock
could leak to another client.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from jobqueue.db.jobs import extend_leases
from jobqueue.db.statement import Op, Procedure, rows, run, scalar
from jobqueue.outcome import WORKER_LOST
from jobqueue.rows import JobId, RescuedJob, WorkerBeat


@dataclass(frozen=True)
class Registration:
    """A worker's row in ``workers``."""

    worker_id: str
    hostname: str
    pid: int
    queues: list[str]
    concurrency: int

    def params(self) -> dict[str, Any]:
        return {"worker_id": self.worker_id, "hostname": self.hostname, "pid": self.pid,
                "queues": self.queues, "concurrency": self.concurrency}


def register(worker: Registration) -> Op:
    return run("register_worker", worker.params())


def deregister(worker_id: str) -> Op:
    return run("deregister_worker", {"worker_id": worker_id})


def set_session(worker_id: str) -> Op:
    """Run on the worker's LISTEN connection: the leader can then tell when it is gone."""
    return run("set_worker_session", {"worker_id": worker_id})


def notify(channel: str, message: str) -> Op:
    return run("notify", {"channel": channel, "message": message})


@dataclass(frozen=True)
class Beat:
    """What one heartbeat found: jobs flagged for cancel, and whether the worker had
    been reaped (and so registered again)."""

    cancel_requested: list[int]
    reregistered: bool
    extended: set[int]  # the held jobs still ours: their leases were extended


def heartbeat(worker: Registration, held: list[int], lease: float) -> Procedure[Beat]:
    """Extend the leases of exactly the jobs this worker holds, and touch its row.

    A job whose claim committed but whose reply never reached the worker is not
    in ``held``: its lease runs out and it is rescued.
    """
    extended = yield extend_leases(held, worker.worker_id, lease)
    alive = yield scalar("heartbeat_worker", {"worker_id": worker.worker_id})
    if alive is None:
        # The leader reaped us (a long stall, a network cut): our jobs were
        # already rescued; come back as a fresh registration.
        yield register(worker)
    return Beat([j.id for j in extended if j.cancel_requested], reregistered=alive is None,
                extended={j.id for j in extended})


@dataclass
class Rescue:
    """What a leader's round did."""

    led: bool
    reaped: list[str] = field(default_factory=list)
    dead: int = 0
    requeued: list[RescuedJob] = field(default_factory=list)
    #: History partitions dropped this round (retention).
    dropped: int = 0


def maintenance_round(key: int, worker_timeout: float, session_grace: float,
                      channel: str, awaited_channel: str, prune: bool) -> Procedure[Rescue]:
    """One round of the maintenance leader; run it in a transaction.

    Reaps workers that stopped heartbeating (or whose session Postgres shows as
    gone) and rescues their jobs: each counts a crashed attempt, and a job out of
    attempts goes to dead_jobs with reason 'crashed', so a job that kills its
    worker cannot crash-loop the fleet.
    """
    if not (yield try_leadership(key)):
        return Rescue(led=False)
    reaped: list[Any] = yield rows("reap_workers", {
        "worker_timeout": worker_timeout, "session_grace": session_grace}, _ReapedWorker)
    lost = {"error_type": WORKER_LOST[0], "error_message": WORKER_LOST[1],
            "awaited_channel": awaited_channel}
    dead: list[JobId] = yield rows("rescue_dead", lost, JobId)
    requeued: list[RescuedJob] = yield rows("rescue_requeue", lost, RescuedJob)
    for queue in sorted({r.queue for r in requeued}):
        yield notify(channel, queue)  # wake idle workers now rather than at their next poll
    yield run("sweep_locks")
    dropped = 0
    if prune:
        # Outcome counters: only the last minute is read (stats, metrics).
        yield run("prune_job_counts", {"keep": 3600.0})
        # History: the next days' partitions made, expired days dropped.
        dropped = yield scalar("maintain_history")
    return Rescue(True, [w.id for w in reaped], len(dead), requeued, dropped)


@dataclass(frozen=True, slots=True)
class _ReapedWorker:
    id: str


def try_leadership(key: int) -> Op:
    """Leader until the transaction ends (it must run in one)."""
    return scalar("try_leadership", {"key": key})


def try_session_leadership(key: int) -> Op:
    return scalar("try_session_leadership", {"key": key})


def worker_heartbeats() -> Op:
    return rows("worker_heartbeats", None, WorkerBeat)


def probe_notify(channel: str, payload: str) -> Op:
    return run("probe_notify", {"channel": channel, "payload": payload})
