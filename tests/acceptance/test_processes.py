"""The process model, with real worker processes: ``@app.task(executor="process")``.

Each test runs ``jobqueue worker --app tests.apps.process_app:app`` and counts
jobs in and out: every job ends exactly once (history or dead_jobs), and the
effects table (one row per run, with the pid that ran it) shows that nothing
ran twice. Children really die here: ``os._exit``, SIGKILL, SIGSEGV, a timeout.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from jobqueue import JobQueue
from tests.acceptance.support import Workers, metrics_args
from tests.helpers import count, scrape, value, wait_until

APP = "tests.apps.process_app:app"


def replacements(port: int) -> dict[str, float | None]:
    samples = scrape(port)
    return {reason: value(samples, "jobqueue_worker_process_replacements_total", reason=reason)
            for reason in ("crashed", "killed", "recycled")}


def runs(admin: psycopg.Connection[Any], schema: str, task: str,
         phase: str = "done") -> list[tuple[int, int, int]]:
    """(job_id, attempt, pid) of each recorded run of ``task`` in ``phase``."""
    return [tuple(r) for r in admin.execute(  # type: ignore[misc]
        sql.SQL("SELECT job_id, attempt, pid FROM {} WHERE task = %s AND phase = %s "
                "ORDER BY job_id, attempt").format(sql.Identifier(schema, "effects")),
        (task, phase)).fetchall()]


def history(admin: psycopg.Connection[Any], schema: str) -> dict[int, tuple[int, Any]]:
    return {r[0]: (r[1], r[2]) for r in admin.execute(
        sql.SQL("SELECT id, attempts, result FROM {}").format(
            sql.Identifier(schema, "job_history"))).fetchall()}


def dead(admin: psycopg.Connection[Any], schema: str) -> dict[int, tuple[str, Any]]:
    return {r[0]: (r[1], r[2]) for r in admin.execute(
        sql.SQL("SELECT id, reason, errors FROM {}").format(
            sql.Identifier(schema, "dead_jobs"))).fetchall()}


def children(pid: int) -> set[int]:
    """The live child processes of ``pid`` (from /proc)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            found.add(int(entry.name))
    return found


def test_handlers_run_in_the_pool_not_the_worker(producer: JobQueue, workers: Workers,
                                                 admin: psycopg.Connection[Any],
                                                 schema: str) -> None:
    ids = producer.enqueue_many([("crunch", {"seconds": 0.05})] * 6, strict=False,
                                queue="cpu")
    async_id = producer.enqueue("async_in_process", {"x": 21}, strict=False, queue="proc")
    worker = workers.start("--queues", "cpu,proc", "--processes", "2", app=APP)
    wait_until(lambda: count(admin, schema, "job_history") == 7, 60,
               message="all jobs succeeded")
    done = runs(admin, schema, "crunch")
    assert sorted(r[0] for r in done) == ids  # each once
    pool = children(worker.pid)
    assert len(pool) == 2, pool
    assert {r[2] for r in done} <= pool and worker.pid not in {r[2] for r in done}
    kept = history(admin, schema)
    assert kept[async_id][1]["double"] == 42 and kept[async_id][1]["pid"] in pool
    assert worker.stop() == 0, worker.log()
    assert not children(worker.pid)  # the pool leaves with the worker


@pytest.mark.parametrize("how", ["exit", "SIGKILL", "SIGSEGV"])
def test_a_dead_child_fails_the_attempt_and_is_replaced(how: str, producer: JobQueue,
                                                        workers: Workers,
                                                        admin: psycopg.Connection[Any],
                                                        schema: str) -> None:
    crashing = producer.enqueue_many([("crash", {"how": how})] * 3, strict=False,
                                      queue="proc")
    doomed = producer.enqueue("always_crash", strict=False, queue="proc")
    port, metrics = metrics_args()
    worker = workers.start("--queues", "proc", "--processes", "2", *metrics, app=APP)
    wait_until(lambda: count(admin, schema, "jobs") == 0, 60, message="every job ended")
    # Each crashing job died once under its first attempt and succeeded on its second.
    assert [r[:2] for r in runs(admin, schema, "crash", "started")] == \
        [(i, a) for i in crashing for a in (1, 2)]
    assert [r[:2] for r in runs(admin, schema, "crash")] == [(i, 2) for i in crashing]
    kept = history(admin, schema)
    assert {i: kept[i][0] for i in crashing} == {i: 2 for i in crashing}
    gone = dead(admin, schema)
    assert list(gone) == [doomed]
    reason, errors = gone[doomed]
    assert reason == "crashed"
    assert "HandlerProcessDied" in errors[0]["type"] and "SIGKILL" in errors[0]["message"]
    assert len(worker.events("process.died")) == 3 + 1
    assert len(children(worker.pid)) == 2  # replaced; the worker goes on
    assert replacements(port) == {"crashed": 4, "killed": 0, "recycled": 0}
    assert value(scrape(port), "jobqueue_worker_processes") == 2
    assert worker.stop() == 0, worker.log()


def test_timeout_kills_the_child(producer: JobQueue, workers: Workers,
                                 admin: psycopg.Connection[Any], schema: str) -> None:
    job = producer.enqueue("too_slow", {"seconds": 30}, strict=False, queue="proc")
    after = producer.enqueue("crunch", {"seconds": 0.01}, strict=False, queue="cpu")
    port, metrics = metrics_args()
    worker = workers.start("--queues", "proc,cpu", "--processes", "1", *metrics, app=APP)
    wait_until(lambda: job in dead(admin, schema), 30, message="the slow job timed out")
    reason, errors = dead(admin, schema)[job]
    assert reason == "timeout" and "process killed" in errors[0]["message"]
    started = runs(admin, schema, "too_slow", "started")
    assert len(started) == 1
    wait_until(lambda: after in history(admin, schema), 30, message="the next job ran")
    time.sleep(0.5)
    assert runs(admin, schema, "too_slow") == []  # killed: it never got past its sleep
    with pytest.raises(ProcessLookupError):
        os.kill(started[0][2], 0)
    assert replacements(port) == {"crashed": 0, "killed": 1, "recycled": 0}
    assert worker.stop() == 0, worker.log()


def test_cancel_kills_the_child_and_progress_comes_through(
        producer: JobQueue, workers: Workers, admin: psycopg.Connection[Any], schema: str,
        tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    cancelled = producer.enqueue("gated", {"gate": str(gate)}, strict=False, queue="proc")
    worker = workers.start("--queues", "proc", "--processes", "2", app=APP)
    wait_until(lambda: runs(admin, schema, "gated", "started"), 30, message="job started")
    pid = runs(admin, schema, "gated", "started")[0][2]
    assert producer.cancel(cancelled) == "cancelling"
    wait_until(lambda: cancelled in dead(admin, schema), 30, message="job cancelled")
    assert dead(admin, schema)[cancelled][0] == "cancelled"
    wait_until(lambda: not _alive(pid), 10, message="the child to be killed")
    finished = producer.enqueue("gated", {"gate": str(gate)}, strict=False, queue="proc")
    gate.touch()
    wait_until(lambda: finished in history(admin, schema), 30, message="second job done")
    info = producer.job(finished)
    assert info.progress is not None and info.progress["note"] == "through the gate"
    assert runs(admin, schema, "gated") == [(finished, 1, runs(admin, schema, "gated")[0][2])]
    assert worker.stop() == 0, worker.log()


def test_an_exception_in_a_child_is_the_jobs_error(producer: JobQueue, workers: Workers,
                                                   admin: psycopg.Connection[Any],
                                                   schema: str) -> None:
    job = producer.enqueue("fails", strict=False, max_attempts=1, queue="proc")
    worker = workers.start("--queues", "proc", "--processes", "1", app=APP)
    wait_until(lambda: job in dead(admin, schema), 30, message="the job failed")
    reason, errors = dead(admin, schema)[job]
    assert reason == "exhausted"
    assert errors[0]["type"] == "ValueError" and f"bad input in job {job}" in errors[0]["message"]
    assert worker.events("process.died") == []  # the child lived on
    assert worker.stop() == 0, worker.log()


def test_shutdown_past_grace_kills_children_and_releases(
        producer: JobQueue, workers: Workers, admin: psycopg.Connection[Any], schema: str,
        tmp_path: Path) -> None:
    ids = producer.enqueue_many([("gated", {"gate": str(tmp_path / "never")})] * 2,
                                strict=False, queue="proc")
    worker = workers.start("--queues", "proc", "--processes", "2", "--shutdown-timeout", "1",
                           app=APP)
    wait_until(lambda: len(runs(admin, schema, "gated", "started")) == 2, 30,
               message="both jobs running")
    pids = {r[2] for r in runs(admin, schema, "gated", "started")}
    worker.signal(signal.SIGTERM)
    assert worker.wait(30) == 0, worker.log()
    assert not any(_alive(p) for p in pids)
    # Back in the queue, the attempt not counted: nothing lost, nothing half-run.
    rows = admin.execute(sql.SQL("SELECT id, state, attempts FROM {} ORDER BY id").format(
        sql.Identifier(schema, "jobs"))).fetchall()
    assert rows == [(i, "queued", 0) for i in ids]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_a_child_killed_while_idle_costs_no_attempt(producer: JobQueue, workers: Workers,
                                                    admin: psycopg.Connection[Any],
                                                    schema: str) -> None:
    worker = workers.start("--queues", "cpu", "--processes", "1", app=APP)
    worker.wait_event("worker.started")
    (idle,) = children(worker.pid)
    os.kill(idle, signal.SIGKILL)
    job = producer.enqueue("crunch", {"seconds": 0.01}, strict=False, queue="cpu")
    wait_until(lambda: job in history(admin, schema), 30, message="the job ran")
    assert history(admin, schema)[job][0] == 1  # its first attempt, on a fresh child
    assert [r[2] for r in runs(admin, schema, "crunch")] != [idle]
    assert worker.events("process.died") == []
    assert worker.stop() == 0, worker.log()


def test_progress_in_a_tight_loop_keeps_its_last_value(producer: JobQueue, workers: Workers,
                                                       admin: psycopg.Connection[Any],
                                                       schema: str) -> None:
    job = producer.enqueue("progress_storm", {"n": 100_000}, strict=False, queue="proc")
    worker = workers.start("--queues", "proc", "--processes", "1", app=APP)
    wait_until(lambda: job in history(admin, schema), 60, message="the job ran")
    progress = producer.job(job).progress
    assert progress is not None
    assert (progress["done"], progress["total"], progress["note"]) == (100_000, 100_000,
                                                                       "step 100000")
    assert worker.stop() == 0, worker.log()
