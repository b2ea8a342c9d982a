"""Transactional handlers: business writes commit with the ack, exactly once.

5,000 jobs of ``tx_effect`` (sync) and ``tx_effect_async`` each insert one
business row through ``ctx.conn`` and fail 10 % of the time after writing it.
Two worker processes run them; one is SIGKILLed at random moments three
times (and started again), and twice the running jobs of the other are
rescued by force while their handlers are still inside their transactions
(what the leader does to a worker it believes lost). At the end business rows
and succeeded jobs are the same set, one row each: no duplicate from a killed
or rescued attempt, no gap from a failed one. The fence is seen to work: the
rescued attempts' acks were refused (``lease_lost``) and rolled back.
"""

from __future__ import annotations

import random
import time
from collections import Counter

import pytest

from jobqueue import JobQueue
from tests.acceptance import support
from tests.faults import Db, wait_registered
from tests.helpers import wait_until

FAULTY = "tests.apps.faulty:app"
JOBS = 5000
WORKER_ARGS = ("--concurrency", "4", "--poll-interval", "0.2")


def finished(db: Db) -> int:
    return int(db.try_value("SELECT (SELECT count(*) FROM {schema}.job_history)"
                            " + (SELECT count(*) FROM {schema}.dead_jobs)") or 0)


def rescue_running(db: Db, worker_id: str) -> list[int]:
    """Hand the worker's running jobs back to the queue behind its back, as the
    leader's rescue does (attempt counted, lease cleared)."""
    return [int(r[0]) for r in db.rows(
        "UPDATE {schema}.jobs SET state = 'queued', locked_by = NULL, locked_until = NULL, "
        "run_at = now() WHERE state = 'running' AND locked_by = %s RETURNING id", (worker_id,))]


@pytest.mark.slow
def test_transactional_effects_are_exactly_once_through_kills_and_rescues(
        app: JobQueue, db: Db, workers: support.Workers) -> None:
    rng = random.Random(12)
    steady = workers.start(*WORKER_ARGS, app=FAULTY)
    victim = workers.start(*WORKER_ARGS, app=FAULTY)
    steady_id = wait_registered(db, steady.popen, steady.log)
    wait_registered(db, victim.popen, victim.log)

    args = {"fail_rate": 0.1, "work": 0.01}
    ids = app.enqueue_many([(("tx_effect" if i % 2 else "tx_effect_async"), args)
                            for i in range(JOBS)], strict=False)

    rescued: list[int] = []
    killed = 0
    for fraction in sorted(rng.uniform(0.1, 0.8) for _ in range(5)):
        wait_until(lambda f=fraction: finished(db) >= f * JOBS, 120,
                   message=f"{fraction:.0%} of the jobs to finish")
        time.sleep(rng.uniform(0.0, 0.2))  # a random point, not a round number of jobs
        if killed < 3:
            victim.kill()  # SIGKILL: no release, no flush; mid-transaction handlers die too
            killed += 1
            victim = workers.start(*WORKER_ARGS, app=FAULTY)
            wait_registered(db, victim.popen, victim.log)
        else:
            taken = wait_until(lambda: rescue_running(db, steady_id), 30, interval=0.005,
                               message="the steady worker to be running jobs")
            rescued += taken

    wait_until(lambda: db.try_value("SELECT count(*) FROM {schema}.jobs") == 0, 180,
               interval=0.1, message="every job to be done or dead")

    business = Counter(int(r[0]) for r in db.rows("SELECT job_id FROM {schema}.effects"))
    succeeded = {int(r[0]) for r in db.rows("SELECT id FROM {schema}.job_history")}
    dead = {int(r[0]) for r in db.rows("SELECT id FROM {schema}.dead_jobs")}
    assert len(ids) == JOBS and succeeded | dead == set(ids), "a job is neither done nor dead"
    assert not succeeded & dead
    # Exactly once: one business row per succeeded job, none for any other.
    duplicates = {job_id: n for job_id, n in business.items() if n > 1}
    assert not duplicates, f"business rows written twice: {list(duplicates.items())[:10]}"
    orphans, missing = set(business) - succeeded, succeeded - set(business)
    assert not orphans and not missing, (f"rows without success: {sorted(orphans)[:10]}, "
                                         f"successes without row: {sorted(missing)[:10]}")
    # Each row is from the attempt that succeeded (the one its history records).
    attempts = {int(j): int(a) for j, a in db.rows("SELECT job_id, attempt FROM {schema}.effects")}
    recorded = {int(j): int(a) for j, a in db.rows("SELECT id, attempts FROM {schema}.job_history")}
    assert attempts == recorded
    results = {int(j): r for j, r in db.rows("SELECT id, result FROM {schema}.job_history")}
    assert all(results[j] == recorded[j] for j in succeeded)  # the handler's return value

    lease_lost = sum(len(w.events("job.lease_lost")) for w in workers.started)
    print(f"\nexactly-once: {JOBS} jobs, {len(succeeded)} succeeded, {len(dead)} dead, "
          f"{killed} kills, {len(rescued)} jobs rescued by force, {lease_lost} acks refused")
    assert rescued, "the forced rescues found no running job"
    assert lease_lost >= 1, "no rescued attempt had its ack refused"
    assert steady.stop() == 0
    assert victim.stop() == 0
