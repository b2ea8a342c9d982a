"""A worker that was frozen past its lease says so, and does not report success.

Worker A runs four gated jobs and holds four more in its buffer when it is
frozen with SIGSTOP (as a long GC pause, a VM stall or a partition would). Past
the heartbeat timeout the fleet (worker B's maintenance) reaps A and rescues
its eight jobs; B runs them all. When A resumes, its four handlers finish (their
effects exist: they did run) but its acks change nothing: each is reported as
``lease_lost``, in the log and in the metrics, never as succeeded; the four it
had not started are checked before anything starts them and are lost too. A
then re-registers and works normally.
"""

from __future__ import annotations

import signal
from pathlib import Path

from jobqueue import JobQueue
from tests.acceptance import support
from tests.acceptance.test_ops_cli import scrape, value
from tests.faults import Db, wait_registered
from tests.helpers import wait_until

FAULTY = "tests.apps.faulty:app"
HEARTBEAT_TIMEOUT = 30.0  # the worker default the leader reaps by


def held_by(db: Db, worker_id: str) -> int:
    return int(db.value("SELECT count(*) FROM {schema}.jobs WHERE state = 'running' "
                        "AND locked_by = %s", (worker_id,)))


def effects_by(db: Db, pid: int) -> list[tuple[int, int]]:
    return [(int(j), int(a)) for j, a in db.rows(
        "SELECT job_id, attempt FROM {schema}.effects WHERE pid = %s ORDER BY job_id", (pid,))]


def test_a_worker_frozen_past_its_lease_reports_lease_lost_not_success(
        app: JobQueue, db: Db, workers: support.Workers, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    port, metrics = support.metrics_args()
    a = workers.start("--concurrency", "4", "--prefetch", "4", *metrics, app=FAULTY)
    a_id = wait_registered(db, a.popen, a.log)
    ids = app.enqueue_many([("gated", {"gate": str(gate)})] * 8, strict=False)
    wait_until(lambda: held_by(db, a_id) == 8, 30, message="A to hold four running, four ready")
    b = workers.start("--concurrency", "8", app=FAULTY)
    b_id = wait_registered(db, b.popen, b.log)

    a.signal(signal.SIGSTOP)
    try:
        # Past the heartbeat timeout B's leader reaps A and B takes all eight.
        wait_until(lambda: held_by(db, b_id) == 8, HEARTBEAT_TIMEOUT + 30,
                   message="B to rescue and run A's eight jobs")
        gate.touch()
        wait_until(lambda: len(effects_by(db, b.pid)) == 8, 30, message="B to finish them")
    finally:
        a.signal(signal.SIGCONT)

    # A's four handlers finish now (their side effects exist: they ran twice),
    # and every one of A's eight jobs is reported lost, none as succeeded.
    wait_until(lambda: len(a.events("job.lease_lost")) == 8, 30, message="A to report 8 lost")
    lost = a.events("job.lease_lost")
    assert sorted(e["job_id"] for e in lost) == ids
    ran = [e for e in lost if e["ran"]]
    assert len(ran) == 4 and all(e["intended"] == "succeeded" and e["duration"] > 0
                                 for e in ran)
    assert sorted(e["job_id"] for e in ran) == [j for j, _ in effects_by(db, a.pid)]
    assert all(e["level"] == "warning" for e in lost)
    assert not a.events("job.succeeded")
    assert len(a.events("worker.lease_in_doubt")) == 1  # said once
    assert a.events("worker.reregistered")
    samples = scrape(port)
    assert sum(v for (name, labels), v in samples.items()
               if name == "jobqueue_jobs_total" and ("outcome", "lease_lost") in labels) == 8
    assert sum(v for (name, labels), v in samples.items()
               if name == "jobqueue_jobs_total" and ("outcome", "succeeded") in labels) == 0
    assert value(samples, "jobqueue_worker_jobs_in_flight") == 0

    # B ran every job once, to the end: each job's effect exists, from B.
    assert effects_by(db, b.pid) == [(job_id, 2) for job_id in ids]
    assert b.stop() == 0
    assert b.events("worker.stopped")[-1]["succeeded"] == 8

    # A goes on normally: with B gone, it runs new jobs to success.
    more = app.enqueue_many([("gated", {"gate": str(gate)})] * 3, strict=False)
    wait_until(lambda: int(db.value("SELECT count(*) FROM {schema}.jobs")) == 0, 30,
               message="A to run the new jobs")
    assert [j for j, _ in effects_by(db, a.pid) if j in more] == more
    assert a.stop() == 0
    stopped = a.events("worker.stopped")[-1]
    assert (stopped["succeeded"], stopped["lease_lost"]) == (3, 8)
