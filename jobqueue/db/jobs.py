"""Procedures on live jobs: insert, claim, acknowledge, release, cancel.

Each function returns a procedure (see :mod:`jobqueue.db.statement`) for a
Store to run; none of them does I/O.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from psycopg.sql import Identifier

from jobqueue.db.statement import (
    Copy,
    InPipeline,
    Op,
    Pipeline,
    Procedure,
    Transaction,
    row,
    rows,
    run,
    scalar,
)
from jobqueue.enqueue import JobBatch
from jobqueue.errors import DatabaseError, DuplicateJobError, LeaseLostError
from jobqueue.outcome import CANCELLED_QUEUED, Kind, Outcome
from jobqueue.protocol import cancel_message, job_channel, outcome_channel
from jobqueue.registry import Attempts
from jobqueue.rows import (
    ClaimedJob,
    HeldJob,
    JobId,
    QueueCapacity,
    QueueSettings,
    ReservedIds,
)

# How often an enqueue with a unique_key tries again when the live job that
# blocked its INSERT finished before the lookup could return it.
UNIQUE_ATTEMPTS = 3

# From this many jobs on, enqueue_many sends them with COPY. One INSERT ...
# unnest is a single round trip, COPY three (ids, COPY, its data), but the
# arrays unnest needs are built and parsed element by element on both sides,
# while COPY's rows are one text stream: per job it costs less than half.
COPY_THRESHOLD = 1000
COPY_CHUNK = 1000  # rows per write into the COPY stream


# -- insert --------------------------------------------------------------------------------


def insert(batch: JobBatch) -> Procedure[list[int]]:
    """Insert ``batch``; the ids in input order."""
    if len(batch) == 1:
        return [(yield from _insert_one(batch))]
    # COPY is not allowed in pipeline mode: a caller's pipeline gets the INSERT.
    if len(batch) >= COPY_THRESHOLD and not (yield InPipeline()):
        ids: list[int] = yield Transaction(_copy(batch))
        return ids
    inserted: list[JobId] = yield rows("insert_jobs", batch.many(), JobId)
    return [r.id for r in inserted]


def _insert_one(batch: JobBatch) -> Procedure[int]:
    params = batch.one()
    for _ in range(UNIQUE_ATTEMPTS):
        inserted: JobId | None = yield row("insert_job", params, JobId)
        if inserted is not None:
            return inserted.id
        # ON CONFLICT on unique_key: the live job that holds the key. Read
        # committed gives this statement a newer snapshot than the INSERT's, so
        # that job may have finished in between: then the key is free, insert again.
        found: int | None = yield scalar("find_unique_job", {"unique_key": batch.unique_key})
        if found is not None:
            if batch.raise_on_duplicate:
                assert batch.unique_key is not None
                raise DuplicateJobError(batch.unique_key, found)
            return found
    raise DatabaseError("the live job holding this unique_key kept finishing between "
                        "insert and lookup; enqueue again")


def _copy(batch: JobBatch) -> Procedure[list[int]]:
    """enqueue_many by COPY: the ids drawn first, then the rows in one stream.

    Run in a transaction (a savepoint in the caller's): on an autocommit
    connection the NOTIFY of the first statement would otherwise go out before
    the rows exist.
    """
    table = Identifier(batch.schema, "jobs").as_string(None)
    reserved: ReservedIds = yield row("reserve_job_ids", {
        "n": len(batch), "queues": sorted(set(batch.queues)), "table": table,
        **batch.shared()}, ReservedIds)
    yield Copy("copy_jobs", copy_rows(reserved.ids, batch, reserved.run_at))
    return reserved.ids


def copy_text(value: str) -> str:
    """A value in COPY's text format: backslash, tab, newline and CR escaped."""
    if "\\" in value or "\t" in value or "\n" in value or "\r" in value:
        value = (value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")
                 .replace("\r", "\\r"))
    return value


def copy_rows(ids: list[int], batch: JobBatch, run_at: str) -> Iterator[str]:
    """The rows of copy_jobs, ``COPY_CHUNK`` at a time, in input order."""
    escaped: dict[str, str] = {}

    def text(value: str) -> str:
        out = escaped.get(value)
        if out is None:
            out = escaped[value] = copy_text(value)
        return out

    # correlation_id, lock_key and trace_context are the same for every job; \N is NULL.
    shared = "\t".join("\\N" if value is None else copy_text(value)
                       for value in (batch.correlation_id, batch.lock_key, batch.trace_context))
    run_at = copy_text(run_at)
    queues, tasks, args = batch.queues, batch.tasks, batch.args
    priorities = batch.priorities
    attempts = ["\\N" if n is None else n for n in batch.max_attempts]
    versions = batch.versions
    for first in range(0, len(ids), COPY_CHUNK):
        yield "".join(
            f"{ids[i]}\t{text(queues[i])}\t{text(tasks[i])}\t{copy_text(args[i])}\t"
            f"{priorities[i]}\t{run_at}\t{attempts[i]}\t{versions[i]}\t{shared}\n"
            for i in range(first, min(len(ids), first + COPY_CHUNK)))


# -- claim ---------------------------------------------------------------------------------


Position = tuple[int, datetime, int]  # (priority, run_at, id): a place in jobs_ready_idx
HEAD: Position = (-32768, datetime.min.replace(tzinfo=timezone.utc), 0)


@dataclass(frozen=True)
class ClaimRequest:
    """One claim: ``limit`` jobs at most, from ``queues`` in this order.

    ``limited`` are the queues with fleet-wide limits, ``lock_keys`` their
    advisory keys (sorted), ``rated`` those with a rate limit.
    """

    worker_id: str
    lease: float
    limit: int
    queues: list[str]
    ranked: bool
    oldest: bool
    limited: list[str] = field(default_factory=list)
    lock_keys: list[int] = field(default_factory=list)
    rated: list[str] = field(default_factory=list)
    #: Per queue, where its scan starts: (priority, run_at, id) of the index
    #: position to start past; ``HEAD`` for the head (see the claim statement).
    after: list[Position] = field(default_factory=list)
    #: The max_attempts of jobs enqueued without one: by task, else the default.
    attempts: Attempts = field(default_factory=Attempts)
    #: Set the worker's settings for the claim's own transaction (no session to
    #: keep them in behind a transaction pooler; see worker_transaction).
    local_settings: bool = False

    def params(self, limits: list[int]) -> dict[str, object]:
        after = self.after or [HEAD] * len(self.queues)
        return {"task_names": list(self.attempts.by_task),
                "task_attempts": list(self.attempts.by_task.values()),
                "default_attempts": self.attempts.default,
                "worker_id": self.worker_id, "lease": self.lease, "limit": self.limit,
                "ranked": self.ranked, "queues": self.queues, "limits": limits,
                "after_priorities": [p for p, _, _ in after],
                "after_run_ats": [r for _, r, _ in after], "after_ids": [i for _, _, i in after]}

    @property
    def statement(self) -> str:
        return "claim_oldest" if self.oldest else "claim"


def queue_settings(queues: Sequence[str] | None) -> Op:
    return rows("queue_settings", {"queues": None if queues is None else list(queues)},
                QueueSettings)


def claim(req: ClaimRequest) -> Procedure[list[ClaimedJob]]:
    claimed: list[ClaimedJob]
    if req.limited:
        claimed = yield Transaction(_limited_claim(req))
        return claimed
    op = rows(req.statement, req.params([req.limit] * len(req.queues)), ClaimedJob)
    if not req.local_settings:
        claimed = yield op
        return claimed
    # The settings and the claim in one pipeline: one implicit transaction
    # (until its sync), so the settings hold for the claim and end with it, in
    # one round trip (BEGIN, SET LOCAL, claim, COMMIT one by one took four and
    # cost a third of the drain rate).
    _, claimed = yield Pipeline((run("worker_transaction"), op))
    return claimed


def _limited_claim(req: ClaimRequest) -> Procedure[list[ClaimedJob]]:
    if req.local_settings:
        yield run("worker_transaction")
    # Sorted keys, so two workers serving overlapping queues lock in the same
    # order and cannot deadlock. The count runs in a statement after the lock
    # is granted, so its snapshot includes every claim of the previous holder.
    for key in req.lock_keys:
        yield run("advisory_xact_lock", {"key": key})
    found: list[QueueCapacity] = yield rows("queue_capacity", {"queues": req.limited},
                                            QueueCapacity)
    capacity = {c.name: c.capacity for c in found}
    limits = [min(req.limit, capacity.get(q, req.limit)) for q in req.queues]
    jobs: list[ClaimedJob] = yield rows(req.statement, req.params(limits), ClaimedJob)
    if req.rated and jobs:
        counts = {q: sum(1 for j in jobs if j.queue == q) for q in req.rated}
        yield run("queue_window_add", {"queues": list(counts), "counts": list(counts.values())})
    return jobs


def next_run_at(queues: Sequence[str]) -> Op:
    return scalar("next_run_at", {"queues": list(queues)})


# -- outcomes ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Recorded:
    """What a flush wrote: the jobs whose outcome landed, and the current owner of
    each job whose outcome changed nothing (None: it is gone from jobs)."""

    written: set[int]
    lost: dict[int, str | None]


@dataclass(frozen=True, slots=True)
class JobOwner:
    id: int
    locked_by: str | None


Tally = dict[str, list[int]]  # queue -> [succeeded, retried, dead]


def tally(outcomes: Sequence[Outcome]) -> Tally:
    """Per queue, the written outcomes of each kind (the columns of job_counts)."""
    counts: Tally = {}
    for o in outcomes:
        column = _TALLIED.get(o.kind)
        if column is not None:
            row = counts.get(o.job.queue)
            if row is None:
                row = counts[o.job.queue] = [0, 0, 0]
            row[column] += 1
    return counts


def per_job(entries: Iterable[tuple[int, Sequence[str]]]) -> str:
    """``{"id": [v, ...], ...}`` as JSON text, each value given as JSON text already
    (a result, an error entry): the acks look each job's values up by its id (see
    ack_succeeded for why not arrays joined with unnest)."""
    return "{" + ",".join(f'"{job_id}":[{",".join(values)}]' for job_id, values in entries) + "}"


def _json(value: str | None) -> str:
    return "null" if value is None else value


def succeed(ok: Sequence[Outcome], worker_id: str, schema: str) -> Op:
    """The ack of successes: out of jobs, into history, workflow nodes waiting for
    them advanced (see ack_succeeded)."""
    return rows("ack_succeeded", {
        "ids": [o.job.id for o in ok],
        "per_job": per_job((o.job.id, (str(o.job.attempts), repr(float(o.keep)),
                                       _json(o.result), _json(o.progress))) for o in ok),
        "worker_id": worker_id, "awaited_channel": outcome_channel(schema),
        "channel": job_channel(schema)}, JobId)


def commit_success(outcome: Outcome, worker_id: str, schema: str) -> Procedure[None]:
    """A transactional handler's ack, inside its transaction: LeaseLostError when the
    attempt no longer owns the job, so that the caller rolls everything back."""
    acked: list[JobId] = yield succeed([outcome], worker_id, schema)
    if not acked:
        raise LeaseLostError(f"job {outcome.job.id}: attempt {outcome.job.attempts} no longer "
                             "holds the job's lease; its transaction is rolled back")


def record(outcomes: Sequence[Outcome], unlock: Sequence[int], counts: Tally,
           worker_id: str, schema: str) -> Procedure[Recorded]:
    """Persist a batch of outcomes in one round trip (the completer's flush).

    One DELETE for every success, one UPDATE for every retry, one DELETE-INSERT
    for every dead job, one UPDATE for the released, the release of finished
    jobs' lock keys and ``counts`` (the previous flush's tally: only what was
    written is counted, and that is known once a flush returns). Each statement
    is guarded by ``locked_by`` on its own, so a flush sent twice changes nothing
    the second time, and an outcome whose statement changed no row was not this
    worker's to write: it is ``lost``. Successes ``committed`` with a
    transactional handler are written already: counted, not sent.
    """
    by_kind: dict[Kind, list[Outcome]] = {kind: [] for kind in Kind}
    committed = set()
    for o in outcomes:
        if o.committed:
            committed.add(o.job.id)
        else:
            by_kind[o.kind].append(o)
    ops: list[Op] = []
    if ok := by_kind[Kind.SUCCEEDED]:
        ops.append(succeed(ok, worker_id, schema))
    if retries := by_kind[Kind.RETRIED]:
        ops.append(rows("ack_retry", {
            "ids": [o.job.id for o in retries],
            "per_job": per_job((o.job.id, (str(o.job.attempts), repr(float(o.delay)),
                                           _json(o.error.to_json() if o.error else None)))
                               for o in retries),
            "worker_id": worker_id}, JobId))
    if dead := by_kind[Kind.DEAD]:
        ops.append(rows("ack_dead", {
            "ids": [o.job.id for o in dead],
            "per_job": per_job((o.job.id, (json.dumps(o.reason.value if o.reason else None),
                                           _json(o.error.to_json() if o.error else None)))
                               for o in dead),
            "worker_id": worker_id, "awaited_channel": outcome_channel(schema)}, JobId))
    for delay in sorted({o.delay for o in by_kind[Kind.RELEASED]}):
        ops.append(rows("release_jobs", {
            "ids": [o.job.id for o in by_kind[Kind.RELEASED] if o.delay == delay],
            "worker_id": worker_id, "delay": delay}, JobId))
    acks = len(ops)
    if unlock:
        ops.append(run("release_locks", {"ids": list(unlock), "worker_id": worker_id}))
    if counts:
        queues = sorted(counts)
        ops.append(run("count_outcomes", {
            "queues": queues, "succeeded": [counts[q][0] for q in queues],
            "retried": [counts[q][1] for q in queues], "dead": [counts[q][2] for q in queues]}))
    results: list[Any] = (yield Pipeline(tuple(ops))) if ops else []
    written = committed | {r.id for result in results[:acks] for r in result}
    missing = [o.job.id for o in outcomes if o.job.id not in written]
    if not missing:
        return Recorded(written, {})
    # Rare (a worker that was frozen or cut off): who has those jobs now?
    owners: list[JobOwner] = yield rows("job_owners", {"ids": missing}, JobOwner)
    found = {o.id: o.locked_by for o in owners}
    return Recorded(written, {job_id: found.get(job_id) for job_id in missing})


# The outcome columns of job_counts; a released job is no outcome.
_TALLIED = {Kind.SUCCEEDED: 0, Kind.RETRIED: 1, Kind.DEAD: 2}


def release_all(worker_id: str) -> Procedure[int]:
    """Shutdown: hand back every job still running here, and their lock keys."""
    released: list[JobId] = yield rows("release_jobs", {"ids": None, "worker_id": worker_id,
                                                        "delay": 0.0}, JobId)
    ids = [r.id for r in released]
    if ids:
        yield run("release_locks", {"ids": ids, "worker_id": worker_id})
    return len(ids)


def record_progress(latest: Sequence[tuple[int, int, str]], worker_id: str,
                    progress_channel: str) -> Op:
    """Write the latest progress of running attempts ((job id, attempt, JSON) each)."""
    return run("record_progress", {
        "ids": [j for j, _, _ in latest],
        "per_job": per_job((j, (str(a), p)) for j, a, p in latest),
        "worker_id": worker_id, "awaited_channel": progress_channel})


def extend_leases(ids: list[int], worker_id: str, lease: float) -> Op:
    return rows("heartbeat_jobs", {"ids": ids, "worker_id": worker_id, "lease": lease}, HeldJob)


def is_live(job_id: int) -> Op:
    """Whether the job is queued, scheduled or running."""
    return scalar("job_is_live", {"id": job_id})


# -- cancel --------------------------------------------------------------------------------


def cancel(job_id: int, control: str, awaited_channel: str) -> Procedure[str]:
    """``cancelled`` (queued: now dead, reason cancelled), ``cancelling`` (running:
    its worker is told), or ``not_found``; one transaction."""
    outcome: str = yield Transaction(_cancel(job_id, control, awaited_channel))
    return outcome


def _cancel(job_id: int, control: str, awaited_channel: str) -> Procedure[str]:
    # A waiting workflow node is cancelled like a queued job (and its dependents die).
    kind, message = CANCELLED_QUEUED
    if (yield scalar("cancel_queued", {"id": job_id, "error_type": kind, "error_message": message,
                                       "awaited_channel": awaited_channel})) is not None:
        return "cancelled"
    if (yield rows("cancel_running", {"id": job_id}, JobId)):
        yield run("notify", {"channel": control, "message": cancel_message(job_id)})
        return "cancelling"
    return "not_found"
