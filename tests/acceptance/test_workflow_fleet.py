"""Workflows on a real fleet: 200 chords of 10 members, transient failures, SIGKILLs.

Two worker processes run the members (20 % of attempts fail and are retried)
and the callbacks; one worker is SIGKILLed twice while it holds jobs, and
started again; the chords arrive in three waves around the kills. A chord's
callback is released by the ack of its last member (exactly once, also when
two members finish at once on two workers) and records, in its own
transaction, the results it received. At the end every callback ran exactly
once with its ten results in order, and nothing is left waiting.
"""

from __future__ import annotations

import json
from functools import partial
from typing import Any

import psycopg
import pytest
from psycopg import sql

from jobqueue import JobQueue, chord, group
from tests.acceptance import support
from tests.faults import Db, wait_registered
from tests.helpers import wait_until

FAULTY = "tests.apps.faulty:app"
WAVES = (70, 70, 60)
CHORDS = sum(WAVES)
MEMBERS = 10
WORKER_ARGS = ("--concurrency", "8", "--poll-interval", "0.2")


def held_by(db: Db, worker_id: str) -> list[int]:
    return [int(r[0]) for r in db.rows(
        "SELECT id FROM {schema}.jobs WHERE state = 'running' AND locked_by = %s", (worker_id,))]


@pytest.mark.slow
def test_every_chord_callback_runs_once_with_its_results_in_order(
        app: JobQueue, db: Db, workers: support.Workers,
        admin: psycopg.Connection[Any]) -> None:
    admin.execute(sql.SQL("CREATE TABLE {} (job_id bigint NOT NULL, results jsonb NOT NULL, "
                          "pid integer NOT NULL)").format(
        sql.Identifier(app.schema, "chord_runs")))
    steady = workers.start(*WORKER_ARGS, app=FAULTY)
    victim = workers.start(*WORKER_ARGS, app=FAULTY)
    wait_registered(db, steady.popen, steady.log)
    victim_id = wait_registered(db, victim.popen, victim.log)

    def enqueue(n: int) -> list[Any]:
        return [app.enqueue_workflow(chord(
            group(app.sig("member", {"i": i, "fail_rate": 0.2, "work": 0.005}, strict=False)
                  for i in range(MEMBERS)),
            app.sig("collect", strict=False))) for _ in range(n)]

    # The chords arrive in three waves, and the victim is killed while it holds
    # jobs of the first two. Each wave is enqueued only once the (re)started
    # victim is registered, so it always has work to claim: with one upfront
    # enqueue the steady worker could drain the rest before the restarted
    # victim claimed anything, and the test waited for a kill point in vain.
    handles: list[Any] = []
    for wave in (WAVES[0], WAVES[1]):
        handles += enqueue(wave)
        wait_until(partial(held_by, db, victim_id), 30, interval=0.005,
                   message="the victim to hold jobs")
        victim.kill()
        victim = workers.start(*WORKER_ARGS, app=FAULTY)
        victim_id = wait_registered(db, victim.popen, victim.log)
    handles += enqueue(WAVES[2])
    callbacks = {h.ids[-1] for h in handles}

    wait_until(lambda: db.try_value("SELECT count(*) FROM {schema}.jobs") == 0, 180,
               interval=0.1, message="every node to be done")
    runs = db.rows("SELECT job_id, results FROM {schema}.chord_runs")
    ran = [int(r[0]) for r in runs]
    assert sorted(ran) == sorted(callbacks), "a callback ran twice, or never"
    for _, results in runs:
        value = results if isinstance(results, list) else json.loads(results)
        assert value == list(range(MEMBERS))
    assert db.value("SELECT count(*) FROM {schema}.dead_jobs") == 0
    assert db.value("SELECT count(*) FROM {schema}.job_history") == CHORDS * (MEMBERS + 1)
    for h in handles[:5]:
        assert app.workflow(h.id).state == "succeeded"
    assert steady.stop() == 0
    assert victim.stop() == 0
