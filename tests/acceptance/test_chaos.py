"""Chaos: 1,000 flaky jobs, a worker SIGKILLed twice and a Postgres restart; none lost.

Two worker processes run jobs whose handler fails at random 30 % of the
time (5 attempts, short backoff) and commits a row to ``effects`` when it
succeeds. Mid-run one worker is SIGKILLed (and started again) twice, and the
database server is restarted once, cutting every session. Afterwards every
job is accounted for: done (a row in ``effects``) or dead in ``dead_jobs``
with one error entry per attempt; nothing is still queued or lost.
"""

from __future__ import annotations

import time
from collections import Counter
from functools import partial

import pytest

from jobqueue import JobQueue
from tests.acceptance import support
from tests.faults import Db, restart_postgres, wait_registered
from tests.helpers import wait_until

FAULTY = "tests.apps.faulty:app"
JOBS = 1000
MAX_ATTEMPTS = 5
WORKER_ARGS = ("--concurrency", "4", "--poll-interval", "0.2")


def held_by(db: Db, worker_id: str) -> list[int]:
    return [int(r[0]) for r in db.rows(
        "SELECT id FROM {schema}.jobs WHERE state = 'running' AND locked_by = %s", (worker_id,))]


def holds_nothing(db: Db, worker_id: str) -> bool:
    return not held_by(db, worker_id)


@pytest.mark.slow
def test_chaos_every_job_is_done_or_dead(
        app: JobQueue, pg_dsn: str, db: Db, workers: support.Workers) -> None:
    steady = workers.start(*WORKER_ARGS, app=FAULTY)
    victim = workers.start(*WORKER_ARGS, app=FAULTY)
    wait_registered(db, steady.popen, steady.log)
    victim_id = wait_registered(db, victim.popen, victim.log)

    started = time.monotonic()
    ids = app.enqueue_many([("flaky", {"fail_rate": 0.3, "work": 0.1})] * JOBS,
                           strict=False, max_attempts=MAX_ATTEMPTS)

    def finished() -> int:
        # Jobs with a final outcome so far (0 while the server is down).
        value = db.try_value("SELECT (SELECT count(DISTINCT job_id) FROM {schema}.effects)"
                             " + (SELECT count(*) FROM {schema}.dead_jobs)")
        return int(value or 0)

    def reach(fraction: float) -> None:
        wait_until(lambda: finished() >= fraction * JOBS, 60,
                   message=f"{fraction:.0%} of the jobs to finish")

    recoveries: list[float] = []
    in_flight_at_kill: list[int] = []
    killed_pids: set[int] = set()
    for fraction in (0.15, 0.40):
        reach(fraction)
        # Kill it while it holds jobs, so the kill takes work down with it.
        held = wait_until(partial(held_by, db, victim_id), 30, interval=0.01,
                          message="the victim to hold jobs")
        killed_at = time.monotonic()
        victim.kill()
        in_flight_at_kill.append(len(held))
        killed_pids.add(victim.pid)
        victim = workers.start(*WORKER_ARGS, app=FAULTY)  # as systemd would
        # Recovery: no job is still held by the dead worker.
        wait_until(partial(holds_nothing, db, victim_id), 30,
                   message="the killed worker's jobs to be rescued")
        recoveries.append(time.monotonic() - killed_at)
        victim_id = wait_registered(db, victim.popen, victim.log)

    reach(0.65)
    downtime = restart_postgres(pg_dsn)

    wait_until(lambda: db.try_value("SELECT count(*) FROM {schema}.jobs") == 0, 120,
               interval=0.1, message="every job to be done or dead")
    duration = time.monotonic() - started
    assert steady.popen.poll() is None, f"the steady worker died:\n{steady.log()}"
    assert victim.popen.poll() is None, f"the restarted worker died:\n{victim.log()}"

    # -- accounting ------------------------------------------------------------------------
    ran_in = {(int(j), int(a)): int(p) for j, a, p in db.rows(
        "SELECT job_id, attempt, pid FROM {schema}.effects")}  # (job, attempt) -> pid
    runs = [(int(j), int(a)) for j, a in db.rows("SELECT job_id, attempt FROM {schema}.effects")]
    done = {job_id for job_id, _ in runs}
    dead = {int(r[0]): r[1:] for r in db.rows(
        "SELECT id, reason, attempts, max_attempts, errors FROM {schema}.dead_jobs")}
    assert len(ids) == JOBS
    assert done | set(dead) == set(ids), "a job is neither done nor dead"

    # A claim counts an attempt, so no attempt of a job can have run twice.
    assert max(Counter(runs).values()) == 1

    for job_id, (reason, attempts, max_attempts, errors) in dead.items():
        # Out of attempts, with the whole history: one error entry per attempt.
        assert (attempts, max_attempts) == (MAX_ATTEMPTS, MAX_ATTEMPTS), job_id
        assert [e["attempt"] for e in errors] == list(range(1, MAX_ATTEMPTS + 1)), errors
        last = errors[-1]["type"]
        assert reason == ("crashed" if last == "WorkerLost" else "exhausted"), (reason, errors)
        # A dead job that nonetheless recorded a success lost that attempt's ack
        # to a crash: the attempt must be in its history as a failure.
        failed_attempts = {e["attempt"] for e in errors}
        assert {a for j, a in runs if j == job_id} <= failed_attempts, (job_id, errors)

    # At-least-once: a job may run to the end twice, but only when the worker
    # that ran it first was killed before its ack was written. The restart of
    # the database is no such excuse: live workers keep their jobs through it.
    ran_twice = [j for j, n in Counter(j for j, _ in runs).items() if n > 1]
    for job_id in ran_twice:
        earlier = sorted(a for j, a in runs if j == job_id)[:-1]
        first = {a: ran_in[job_id, a] for a in earlier}
        assert set(first.values()) <= killed_pids, (job_id, first, killed_pids)
    rescued = sum(e.get("requeued", 0) + e.get("dead", 0)
                  for w in workers.started for e in w.events("maintenance.rescued"))
    print(f"\nchaos: {JOBS} jobs in {duration:.1f}s; done {len(done)}, dead {len(dead)} "
          f"({Counter(r[0] for r in dead.values())}); ran twice {len(ran_twice)}; "
          f"in flight at kills {in_flight_at_kill}; recovery after kills "
          f"{[f'{r:.1f}s' for r in recoveries]}; jobs rescued {rescued}; "
          f"postgres down {downtime:.1f}s")
    assert all(r < 30.0 for r in recoveries)

    # Both workers rode out the restart and still shut down cleanly.
    assert steady.stop() == 0
    assert victim.stop() == 0
