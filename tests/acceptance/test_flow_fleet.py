"""Flow control across real ``jobqueue worker`` processes, steered from the CLI.

A per-queue limit set with ``jobqueue queue limit`` holds across three worker
processes (sampled continuously and rebuilt from the handlers' own run
intervals); jobs sharing a ``lock`` never overlap while jobs with other locks
run beside them, and a crashed holder's lock is freed once the fleet has
reaped it; ``--queues a:3,b:1`` serves the two queues about three to one;
``jobqueue queue pause`` stops every worker from claiming within a second
(``stats`` shows it) and ``resume`` lets the jobs run; ``jobqueue cancel``
removes a queued job and stops running ones, async or sync. Every test counts
jobs in and jobs out. The handlers are in ``tests/apps/flow_app.py``.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from jobqueue import JobQueue
from tests.acceptance import support
from tests.apps.flow_app import RUNS_DDL
from tests.helpers import count, wait_until

APP = "tests.apps.flow_app:app"
Conn = psycopg.Connection[Any]


@pytest.fixture
def runs_table(admin: Conn, migrated: str) -> str:
    admin.execute(sql.SQL(RUNS_DDL).format(sql.Identifier(migrated)))
    return migrated


@pytest.fixture
def producer(pg_dsn: str, runs_table: str) -> Iterator[JobQueue]:
    """The test's own JobQueue: enqueues by task name, as a producer that does not
    import the worker's code would."""
    queue = JobQueue(pg_dsn, schema=runs_table)
    yield queue
    queue.close()


@dataclass
class Run:
    job_id: int
    queue: str
    pid: int
    started: datetime
    finished: datetime | None
    cancel_seen: bool = False


def read_runs(admin: Conn, schema: str) -> list[Run]:
    """Every handler run, in start order (a job run twice appears twice)."""
    rows = admin.execute(sql.SQL("SELECT job_id, queue, phase, pid, at FROM {} ORDER BY seq")
                         .format(sql.Identifier(schema, "runs"))).fetchall()
    runs: list[Run] = []
    open_runs: dict[int, Run] = {}
    for job_id, queue, phase, pid, at in rows:
        if phase == "started":
            run = Run(job_id, queue, pid, at, None)
            runs.append(run)
            open_runs[job_id] = run
        elif phase == "finished":
            open_runs.pop(job_id).finished = at
        elif phase == "cancel_seen":
            open_runs[job_id].cancel_seen = True
    return runs


def phase_count(admin: Conn, schema: str, phase: str, queue: str | None = None) -> int:
    return count(admin, schema, "runs", "phase = %s AND (%s::text IS NULL OR queue = %s)",
                 (phase, queue, queue))


def spans(runs: list[Run]) -> list[tuple[datetime, datetime]]:
    """The runs' intervals; every one of them must have finished."""
    out = []
    for run in runs:
        assert run.finished is not None, f"job {run.job_id} did not finish"
        out.append((run.started, run.finished))
    return out


def max_overlap(spans: list[tuple[datetime, datetime]]) -> int:
    """The most intervals open at one instant (an end and a start at one instant do not
    overlap)."""
    events = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    most = running = 0
    for _, step in events:  # -1 sorts before +1 at equal times
        running += step
        most = max(most, running)
    return most


def db_now(admin: Conn) -> datetime:
    row = admin.execute("SELECT clock_timestamp()").fetchone()
    assert row is not None
    return row[0]  # type: ignore[no-any-return]


class RunningSampler:
    """Counts a queue's running jobs in a tight loop, in a thread of its own."""

    def __init__(self, dsn: str, schema: str, queue: str) -> None:
        self.query = sql.SQL("SELECT count(*) FROM {} WHERE queue = %s AND state = 'running'"
                             ).format(sql.Identifier(schema, "jobs"))
        self.dsn, self.queue = dsn, queue
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            while not self._stop.is_set():
                row = conn.execute(self.query, (self.queue,)).fetchone()
                assert row is not None
                self.samples.append(int(row[0]))

    def __enter__(self) -> RunningSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


def start_fleet(workers: support.Workers, n: int, *args: str) -> list[support.WorkerProcess]:
    fleet = [workers.start("--poll-interval", "0.1", *args, app=APP) for _ in range(n)]
    for proc in fleet:
        proc.wait_event("worker.started")
    return fleet


def stop_fleet(fleet: list[support.WorkerProcess]) -> None:
    for proc in fleet:
        if proc.popen.poll() is None:
            assert proc.stop() == 0, proc.log()


def assert_all_gone(admin: Conn, schema: str) -> None:
    """Every job finished: none is left live, dead, or holding a lock key."""
    assert count(admin, schema, "jobs") == 0
    assert count(admin, schema, "dead_jobs") == 0
    assert count(admin, schema, "job_locks") == 0


# -- fleet-wide concurrency and rate limits ------------------------------------------------


def test_concurrency_limit_of_two_holds_across_three_workers(
        pg_dsn: str, runs_table: str, admin: Conn, producer: JobQueue,
        workers: support.Workers, cli: support.Cli) -> None:
    schema, total = runs_table, 16
    assert "max running 2" in cli.ok("queue", "limit", "lim", "--max-running", "2")
    # Six free slots in the fleet: only the fleet-wide limit keeps it to two.
    fleet = start_fleet(workers, 3, "--queues", "lim", "--concurrency", "2")
    with RunningSampler(pg_dsn, schema, "lim") as sampler:
        producer.enqueue_many([("work", {"seconds": 0.15})] * total, queue="lim",
                              strict=False)
        wait_until(lambda: phase_count(admin, schema, "finished") == total, 60,
                   message="every job to finish")
    stop_fleet(fleet)

    # Sampled continuously: never more than two running, and two were reached.
    assert len(sampler.samples) > 100
    assert max(sampler.samples) == 2
    # The handlers' own intervals agree (each lies within its job's running time).
    runs = read_runs(admin, schema)
    assert sorted(r.job_id for r in runs) == sorted({r.job_id for r in runs})  # once each
    assert len(runs) == total
    assert max_overlap(spans(runs)) == 2
    assert_all_gone(admin, schema)
    by_pid = {p.pid: sum(1 for r in runs if r.pid == p.pid) for p in fleet}
    print(f"\nconcurrency limit 2 over 3 workers: {len(sampler.samples)} samples, "
          f"jobs per worker {by_pid}")


# -- lock keys ------------------------------------------------------------------------------


def test_jobs_sharing_a_lock_never_overlap_while_other_locks_run(
        runs_table: str, admin: Conn, producer: JobQueue, workers: support.Workers,
        tmp_path: Path) -> None:
    schema = runs_table
    gate = tmp_path / "gate"
    fleet = start_fleet(workers, 2, "--queues", "default", "--concurrency", "4")
    # Six jobs of one customer first, all held at the gate while running; then
    # jobs of other customers, which must not wait behind them.
    same = [producer.enqueue("work", {"seconds": 0.05, "gate": str(gate)}, lock="customer:42",
                             strict=False) for _ in range(6)]
    others = [producer.enqueue("work", {"seconds": 0.5}, lock=f"customer:{i}", strict=False)
              for i in range(3)]
    wait_until(lambda: phase_count(admin, schema, "finished") == len(others), 30,
               message="the other customers' jobs to finish")
    # While they ran, exactly one job of customer 42 had started: it holds the lock.
    runs = read_runs(admin, schema)
    assert [r.job_id for r in runs if r.job_id in same] == [same[0]]
    assert max_overlap(spans([r for r in runs if r.job_id in others])) >= 2
    gate.touch()
    total = len(same) + len(others)
    wait_until(lambda: phase_count(admin, schema, "finished") == total, 30,
               message="customer 42's jobs to finish")
    stop_fleet(fleet)

    runs = read_runs(admin, schema)
    assert sorted(r.job_id for r in runs) == sorted(same + others)  # each ran once
    assert max_overlap(spans([r for r in runs if r.job_id in same])) == 1
    assert_all_gone(admin, schema)


def test_crashed_holders_lock_is_freed_by_the_sweep(
        runs_table: str, admin: Conn, producer: JobQueue, workers: support.Workers,
        tmp_path: Path) -> None:
    schema = runs_table
    gate = tmp_path / "gate"
    fleet = start_fleet(workers, 2, "--queues", "default", "--concurrency", "2")
    holder = producer.enqueue("work", {"gate": str(gate)}, lock="report", strict=False)
    wait_until(lambda: phase_count(admin, schema, "started") == 1, 30,
               message="the holder to start")
    (first,) = read_runs(admin, schema)
    waiting = producer.enqueue("work", {}, lock="report", strict=False)
    unrelated = producer.enqueue("work", {}, lock="other", strict=False)
    wait_until(lambda: phase_count(admin, schema, "finished") == 1, 30,
               message="the unrelated job to finish")
    # The fleet is claiming, yet the job waiting for the held lock did not start.
    assert [r.job_id for r in read_runs(admin, schema)] == [holder, unrelated]
    # Its ack written too (a handler's row commits before its worker's ack flush): a
    # kill of the worker that ran it before then would run it again, at least once.
    wait_until(lambda: count(admin, schema, "jobs", "id = %s", (unrelated,)) == 0, 30,
               message="the unrelated job's ack")

    victim = next(p for p in fleet if p.pid == first.pid)
    survivor = next(p for p in fleet if p is not victim)
    victim.kill()
    killed_at = db_now(admin)
    gate.touch()  # the holder's second run need not wait
    wait_until(lambda: phase_count(admin, schema, "finished") == 3, 60,
               message="the rescued holder and the waiting job to finish")
    survivor.wait_event("maintenance.rescued")
    stop_fleet([survivor])

    runs = read_runs(admin, schema)
    assert sorted(r.job_id for r in runs) == sorted([holder, holder, waiting, unrelated])
    # The killed run never finished; after the kill the lock's jobs ran one at a time.
    assert runs[0].job_id == holder and runs[0].finished is None
    later = spans([r for r in runs[1:] if r.job_id in (holder, waiting)])
    assert all(start > killed_at for start, _ in later)
    assert max_overlap(later) == 1
    assert_all_gone(admin, schema)


# -- weighted queues ------------------------------------------------------------------------


def test_weighted_queues_are_served_about_three_to_one(
        runs_table: str, admin: Conn, producer: JobQueue, workers: support.Workers) -> None:
    schema, each, measured = runs_table, 400, 400
    producer.enqueue_many([("work", {})] * each, queue="a", strict=False)
    producer.enqueue_many([("work", {})] * each, queue="b", strict=False)
    # One slot and no buffer: every claim is one job, so the order of runs is the
    # order of draws. (With a buffer a claim takes up to a batch from the queue
    # drawn first: the same 3:1 over many claims, in coarser steps.)
    proc = workers.start("--queues", "a:3,b:1", "--concurrency", "1", "--prefetch", "0",
                         "--burst", app=APP)
    assert proc.wait(120) == 0, proc.log()

    runs = read_runs(admin, schema)
    assert len(runs) == 2 * each and len({r.job_id for r in runs}) == 2 * each
    # The first 400 runs, while both queues were still full (a has 400 jobs, so
    # even a 5:1 split could not empty it within them).
    first = runs[:measured]
    a = sum(1 for r in first if r.queue == "a")
    b = measured - a
    # Expected 300:100; the band 2:1..5:1 is more than 3.8 standard deviations
    # of the binomial draw either way.
    assert 2 * b <= a <= 5 * b, f"a={a}, b={b}"
    assert_all_gone(admin, schema)
    print(f"\nweights a:3,b:1 over the first {measured} jobs: a={a}, b={b} ({a / b:.2f}:1)")


# -- pause and resume -----------------------------------------------------------------------


def test_pause_stops_every_worker_within_a_second_and_resume_runs_the_jobs(
        runs_table: str, admin: Conn, producer: JobQueue, workers: support.Workers,
        cli: support.Cli) -> None:
    schema, backlog = runs_table, 120
    fleet = start_fleet(workers, 2, "--queues", "p,r", "--concurrency", "2")
    producer.enqueue_many([("work", {"seconds": 0.05})] * backlog, queue="p", strict=False)
    wait_until(lambda: phase_count(admin, schema, "finished", "p") >= 4, 30,
               message="the paused queue to be flowing first")

    assert cli.ok("queue", "pause", "p").strip() == "queue 'p' paused"
    paused_at = db_now(admin)
    # Jobs that arrive while p is paused: their NOTIFY wakes every worker, and
    # none may take them.
    arrived = producer.enqueue_many([("work", {})] * 10, queue="p", strict=False)
    total = backlog + len(arrived)
    # Another queue keeps flowing: a job that takes 1.5 s starts and finishes
    # while p is paused, which is how long the test watches p.
    producer.enqueue("work", {"seconds": 1.5}, queue="r", strict=False)
    wait_until(lambda: phase_count(admin, schema, "finished", "r") == 1, 30,
               message="the other queue's job to run")

    stats = {row["queue"]: row for row in json.loads(cli.ok("stats", "--json"))}
    assert stats["p"]["paused"] is True and stats["r"]["paused"] is False
    # The table: columns are separated by at least two spaces.
    header, _, *lines = [re.split(r"\s{2,}", line) for line in cli.ok("stats").splitlines()]
    column = header.index("paused")
    assert {line[0]: line[column] for line in lines} == {"p": "yes", "r": "no"}
    assert json.loads(cli.ok("queue", "list", "--json"))[0] == {
        "name": "p", "paused": True, "max_running": None, "rate_limit": None,
        "rate_period": None, "max_ready": None, "reject_when_full": False}

    runs = read_runs(admin, schema)
    p_runs = [r for r in runs if r.queue == "p"]
    late = [r for r in p_runs if r.started > paused_at + timedelta(seconds=1)]
    assert late == [], f"claimed from the paused queue after a second: {late}"
    assert [r for r in p_runs if r.job_id in arrived] == []
    left = count(admin, schema, "jobs", "queue = 'p' AND state = 'queued'")
    assert left >= len(arrived) and left + len(p_runs) == total  # the rest stayed queued
    last_start = max(r.started for r in p_runs)

    assert cli.ok("queue", "resume", "p").strip() == "queue 'p' resumed"
    wait_until(lambda: phase_count(admin, schema, "finished", "p") == total, 30,
               message="the resumed queue to drain")
    stop_fleet(fleet)
    runs = read_runs(admin, schema)
    assert sorted(r.job_id for r in runs if r.queue == "p") == \
        sorted({r.job_id for r in runs if r.queue == "p"})
    assert len([r for r in runs if r.queue == "p"]) == total
    assert json.loads(cli.ok("stats", "--json"))[0]["paused"] is False
    assert_all_gone(admin, schema)
    print(f"\npause: last start in p {(last_start - paused_at).total_seconds():+.3f}s "
          f"after the pause returned; {left} jobs waited for resume")


# -- cancel ---------------------------------------------------------------------------------


def dead_reason(admin: Conn, schema: str, job_id: int) -> str | None:
    row = admin.execute(sql.SQL("SELECT reason FROM {} WHERE id = %s")
                        .format(sql.Identifier(schema, "dead_jobs")), (job_id,)).fetchone()
    return None if row is None else str(row[0])


def test_cancel_from_the_cli_queued_running_async_and_running_sync(
        runs_table: str, admin: Conn, producer: JobQueue, workers: support.Workers,
        cli: support.Cli, tmp_path: Path) -> None:
    schema = runs_table
    (proc,) = start_fleet(workers, 1, "--concurrency", "4")

    # Queued (due in an hour): removed at once and kept in dead_jobs.
    queued = producer.enqueue("work", {}, delay=3600, strict=False)
    out = cli.ok("cancel", str(queued))
    assert out.strip() == f"job {queued} cancelled (kept in dead_jobs, reason cancelled)"
    assert dead_reason(admin, schema, queued) == "cancelled"
    assert count(admin, schema, "jobs", "id = %s", (queued,)) == 0
    again = cli("cancel", str(queued))
    support.assert_one_error_line(again, f"no queued or running job with id {queued}")

    # Running async: cancelled on the worker's event loop, promptly.
    blocked = producer.enqueue("work", {"gate": str(tmp_path / "never")}, strict=False)
    wait_until(lambda: phase_count(admin, schema, "started") == 1, 30,
               message="the async job to start")
    asked = time.monotonic()
    assert "was asked to stop it" in cli.ok("cancel", str(blocked))
    wait_until(lambda: dead_reason(admin, schema, blocked) == "cancelled", 10,
               message="the async job to be cancelled")
    async_latency = time.monotonic() - asked

    # Running sync, in a thread: the handler sees ctx.cancelled and stops.
    sync_job = producer.enqueue("cooperative", {}, strict=False)
    wait_until(lambda: phase_count(admin, schema, "started") == 2, 30,
               message="the sync job to start")
    cli.ok("cancel", str(sync_job), "--json")
    wait_until(lambda: dead_reason(admin, schema, sync_job) == "cancelled", 10,
               message="the sync job to be cancelled")
    assert proc.stop() == 0, proc.log()

    runs = {r.job_id: r for r in read_runs(admin, schema)}
    assert set(runs) == {blocked, sync_job}  # the queued one never ran
    assert runs[blocked].finished is None
    assert runs[sync_job].cancel_seen and runs[sync_job].finished is None
    assert count(admin, schema, "jobs") == 0
    assert count(admin, schema, "dead_jobs") == 3
    assert count(admin, schema, "dead_jobs", "reason = 'cancelled' AND attempts = 1 "
                 "AND id = ANY(%s)", ([blocked, sync_job],)) == 2
    print(f"\ncancel of a running async job: dead {async_latency:.3f}s after the command "
          f"was started")


def test_fair_every_sets_how_often_a_claim_takes_the_oldest_jobs(
        runs_table: str, admin: Conn, producer: JobQueue, workers: support.Workers) -> None:
    schema = runs_table
    for fair_every, expected in (("1", "oldest first"), ("0", "by priority")):
        # Urgent (0) and background (5) jobs, interleaved in time.
        ids = [producer.enqueue("work", {}, priority=priority, strict=False)
               for priority in (5, 0, 5, 0, 5, 0)]
        proc = workers.start("--concurrency", "1", "--burst", "--fair-every", fair_every,
                             app=APP)
        assert proc.wait(60) == 0, proc.log()
        order = [r.job_id for r in read_runs(admin, schema) if r.job_id in ids]
        if expected == "oldest first":  # every claim is a fairness claim
            assert order == ids
        else:  # never one: strictly by priority, then age
            assert order == ids[1::2] + ids[0::2]
    assert_all_gone(admin, schema)


def test_cancel_of_an_unknown_job_is_one_error_line(runs_table: str, cli: support.Cli) -> None:
    support.assert_one_error_line(cli("cancel", "987654321"),
                                  "no queued or running job with id 987654321")
    assert json.loads(cli("cancel", "987654321", "--json").stdout) == {
        "id": 987654321, "outcome": "not_found"}


def test_worker_rejects_a_bad_queue_weight(runs_table: str, workers: support.Workers) -> None:
    proc = workers.start("--queues", "a:3,b:zero", app=APP)
    assert proc.wait(30) != 0
    lines = [line for line in proc.log().splitlines() if line.startswith("error: ")]
    assert lines == ["error: --queues: weight 'zero' of 'b' is not a number"], proc.log()
    assert "Traceback" not in proc.log()

