"""Behind a real PgBouncer in transaction mode (``pooler="transaction"``).

There, consecutive transactions of one client connection may run on different
server sessions: a prepared statement, a session setting, a session advisory
lock or a LISTEN would land on whichever server connection is current. These
tests run enqueue (own pool, a caller's psycopg and SQLAlchemy connections),
real ``jobqueue worker`` processes, cron, dead list/replay and flow control
through the pooler, and count jobs in and out. The PgBouncer comes from
``tests/pgbouncer.py`` (``.ci/run`` installs the Debian package).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import statistics
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
import psycopg.conninfo
import pytest
import sqlalchemy
from psycopg import sql

from jobqueue import JobQueue
from tests.acceptance import support
from tests.apps.cron_app import CRON_RUNS_DDL
from tests.helpers import count, wait_until, worker_thread

RECORDER = "tests.apps.recorder:app"


@pytest.fixture
def pooled_env(env: dict[str, str], bouncer_dsn: str) -> dict[str, str]:
    """The CLI's environment with the DSN through PgBouncer (and no pooler set)."""
    return {**env, "JOBQUEUE_DSN": bouncer_dsn}


@pytest.fixture
def pooled(bouncer_dsn: str, migrated: str) -> Iterator[JobQueue]:
    app = JobQueue(bouncer_dsn, schema=migrated, pooler="transaction")
    yield app
    app.close()


def effects(admin: psycopg.Connection[Any], schema: str,
            phase: str = "done") -> list[tuple[Any, ...]]:
    return [tuple(r) for r in admin.execute(sql.SQL(
        "SELECT job_id, task, attempt, at FROM {} WHERE phase = %s ORDER BY at")
        .format(sql.Identifier(schema, "effects")), (phase,)).fetchall()]


def problems(proc: support.WorkerProcess) -> list[str]:
    """What a healthy run behind the pooler never logs."""
    log = proc.log()
    found = [line for line in log.splitlines() if "prepared statement" in line
             or "Traceback" in line or "bind message" in line]
    found += [json.dumps(r) for r in proc.events() if r.get("level") in ("error", "critical")]
    return found


def test_enqueue_through_pgbouncer_on_every_kind_of_connection(
        pooled: JobQueue, bouncer_dsn: str, admin: psycopg.Connection[Any]) -> None:
    schema = pooled.schema
    errors: list[BaseException] = []

    def guarded(fn: Any) -> Any:
        def run() -> None:
            try:
                fn()
            except BaseException as exc:  # noqa: BLE001 - re-raised in the test thread
                errors.append(exc)
        return run

    # The jobqueue's own pool, four threads at once (so the pooler hands each
    # client connection different server connections), well past psycopg's
    # prepare threshold of five executions.
    def own_pool() -> None:
        for i in range(100):
            pooled.enqueue("plain", {"i": i}, strict=False)

    # A caller's connection with psycopg's defaults, which would prepare any
    # statement run five times: jobqueue's are sent unprepared all the same.
    # (The caller's own write opts out per statement, as it must behind the pooler.)
    def callers_connection() -> None:
        with psycopg.connect(bouncer_dsn) as conn:
            assert conn.prepare_threshold == 5
            for i in range(30):
                with conn.transaction():
                    conn.execute(sql.SQL("INSERT INTO {} (n) VALUES (%s)").format(
                        sql.Identifier(schema, "orders")), (i,), prepare=False)
                    pooled.enqueue("order", {"i": i}, conn=conn, strict=False)

    admin.execute(sql.SQL("CREATE TABLE {} (n int)").format(sql.Identifier(schema, "orders")))
    threads = [threading.Thread(target=guarded(f)) for f in (own_pool, callers_connection) * 3]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []

    pooled.enqueue_many([("many", {"i": i}) for i in range(10)], strict=False)
    pooled.enqueue_many([("copied", {"i": i}) for i in range(1500)], strict=False)  # COPY

    async def async_enqueue() -> None:
        for i in range(50):
            await pooled.enqueue_async("async", {"i": i}, strict=False)
        await pooled.aclose()

    asyncio.run(async_enqueue())

    # SQLAlchemy with the settings the README gives for a transaction pooler.
    p = psycopg.conninfo.conninfo_to_dict(bouncer_dsn)
    url = sqlalchemy.engine.URL.create(
        "postgresql+psycopg", username=str(p["user"]), password=p.get("password") or None,
        host=str(p["host"]), port=int(p["port"]), database=str(p["dbname"]))
    engine = sqlalchemy.create_engine(url, connect_args={"prepare_threshold": None},
                                      poolclass=sqlalchemy.pool.NullPool)
    with engine.begin() as connection:
        for i in range(10):
            pooled.enqueue("orm", {"i": i}, conn=connection, strict=False)
    engine.dispose()

    tasks = dict(admin.execute(sql.SQL("SELECT task, count(*) FROM {} GROUP BY task")
                               .format(sql.Identifier(schema, "jobs"))).fetchall())
    assert tasks == {"plain": 300, "order": 90, "many": 10, "copied": 1500, "async": 50,
                     "orm": 10}
    assert count(admin, schema, "orders") == 90


def test_a_worker_drains_500_jobs_exactly_once_through_pgbouncer(
        pooled: JobQueue, admin: psycopg.Connection[Any], workers: support.Workers,
        pooled_env: dict[str, str]) -> None:
    schema = pooled.schema
    support.create_effects(admin, schema)
    ids = [pooled.enqueue("record", {"n": i}, strict=False) for i in range(250)]
    ids += pooled.enqueue_many([("slow_sync", {"seconds": 0}) for _ in range(250)], strict=False)
    proc = workers.start("--pooler", "transaction", "--concurrency", "10", env=pooled_env,
                         app=RECORDER)
    poll_only = proc.wait_event("worker.poll_only")
    assert "listen_dsn" in poll_only["reason"]
    wait_until(lambda: count(admin, schema, "effects", "phase IN ('done', 'finished')") >= 500,
               60, message="500 jobs to run")
    assert proc.stop() == 0, proc.log()
    runs = Counter(r[0] for r in admin.execute(sql.SQL(
        "SELECT job_id FROM {} WHERE phase IN ('done', 'finished')")
        .format(sql.Identifier(schema, "effects"))).fetchall())
    assert sorted(runs) == sorted(ids)
    assert set(runs.values()) == {1}, "a job ran twice"
    assert count(admin, schema, "jobs") == 0 and count(admin, schema, "dead_jobs") == 0
    assert problems(proc) == []
    started = proc.events("worker.started")[0]
    assert (started["pooler"], started["listening"]) == ("transaction", False)


def wakeups(app: JobQueue, admin: psycopg.Connection[Any], n: int) -> list[float]:
    """Enqueue ``n`` jobs to an idle worker, one at a time: enqueue to start, each."""
    schema = app.schema
    latencies = []
    for i in range(n):
        before = count(admin, schema, "effects")
        sent = time.time()
        app.enqueue("record", {"n": i}, strict=False)
        wait_until(lambda b=before: count(admin, schema, "effects") > b, 10, interval=0.002,
                   message="the job to run")
        (at,) = admin.execute(sql.SQL("SELECT max(at) FROM {}").format(
            sql.Identifier(schema, "effects"))).fetchone()  # type: ignore[misc]
        assert isinstance(at, datetime)
        latencies.append(at.timestamp() - sent)
        time.sleep(0.05)  # idle again: the next job must be woken for, not found
    return latencies


def test_listen_dsn_wakes_an_idle_worker_behind_pgbouncer_within_milliseconds(
        pooled: JobQueue, pg_dsn: str, admin: psycopg.Connection[Any],
        workers: support.Workers, pooled_env: dict[str, str]) -> None:
    schema = pooled.schema
    support.create_effects(admin, schema)
    # A poll every 5 s (1.25 s while not listening): only NOTIFY explains a
    # start within milliseconds.
    direct = workers.start("--pooler", "transaction", "--listen-dsn", pg_dsn,
                           "--poll-interval", "5", env=pooled_env, app=RECORDER)
    direct.wait_event("listener.connected")
    assert direct.events("worker.poll_only") == []
    pooled.enqueue("record", {"n": -1}, strict=False)  # warm the handler's own pool
    wait_until(lambda: count(admin, schema, "effects") == 1, 10, message="the first job")
    with_listen = wakeups(pooled, admin, 15)
    assert direct.stop() == 0, direct.log()
    assert problems(direct) == []

    polling = workers.start("--pooler", "transaction", "--poll-interval", "0.4",
                            env=pooled_env, app=RECORDER)
    polling.wait_event("worker.poll_only")
    without = wakeups(pooled, admin, 8)
    assert polling.stop() == 0, polling.log()
    assert problems(polling) == []
    print(f"\nenqueue -> start behind PgBouncer: with listen_dsn median "
          f"{statistics.median(with_listen) * 1000:.1f} ms (max {max(with_listen) * 1000:.1f}); "
          f"poll-only (poll 0.4 s, 0.1 s while not listening) median "
          f"{statistics.median(without) * 1000:.1f} ms")
    assert statistics.median(with_listen) < 0.050, with_listen
    # Poll-only is bounded by the poll (a quarter of the interval while not listening).
    assert max(without) < 0.1 + 0.5, without


def test_cron_fires_each_tick_once_with_two_workers_behind_pgbouncer(
        migrated: str, admin: psycopg.Connection[Any], workers: support.Workers,
        pooled_env: dict[str, str]) -> None:
    schema = migrated
    admin.execute(sql.SQL(CRON_RUNS_DDL).format(sql.Identifier(schema)))
    env = {**pooled_env, "JOBQUEUE_POOLER": "transaction"}
    fleet = [workers.start(env=env, app="tests.apps.cron_app:fleet") for _ in range(2)]
    for proc in fleet:
        proc.wait_event("worker.started")

    def ticks() -> list[tuple[Any, ...]]:
        return [tuple(r) for r in admin.execute(sql.SQL(
            "SELECT tick, count(*) FROM {} GROUP BY tick ORDER BY tick")
            .format(sql.Identifier(schema, "cron_runs"))).fetchall()]

    wait_until(lambda: len(ticks()) >= 6, 30, interval=0.1, message="six ticks")
    for proc in fleet:
        assert proc.stop() == 0, proc.log()
        assert problems(proc) == []
    found = ticks()
    assert [n for _, n in found] == [1] * len(found), f"a tick ran twice: {found}"
    gaps = [b - a for (a, _), (b, _) in itertools.pairwise(found)]
    assert {g.total_seconds() for g in gaps} == {1.0}, f"ticks missed: {found}"
    assert sum(len(p.events("cron.fired")) for p in fleet) >= len(found)


def test_dead_list_and_replay_through_pgbouncer(
        pooled: JobQueue, admin: psycopg.Connection[Any], cli: support.Cli,
        pooled_env: dict[str, str]) -> None:
    schema = pooled.schema
    job_id = pooled.enqueue("record", {"n": 1}, strict=False)
    assert pooled.cancel(job_id) == "cancelled"  # queued: dead at once, reason cancelled
    env = {**pooled_env, "JOBQUEUE_POOLER": "transaction"}
    listed = json.loads(cli.ok("dead", "list", "--json", env=env))
    assert [(d["id"], d["reason"]) for d in listed] == [(job_id, "cancelled")]
    shown = cli.ok("dead", "show", str(job_id), env=env)
    assert f"dead job {job_id}: record" in shown
    replayed = cli.ok("dead", "replay", str(job_id), env=env)
    assert str(job_id) in replayed
    assert count(admin, schema, "jobs", "replay_of = %s", (job_id,)) == 1
    # A pooler value that does not exist: one line, no traceback.
    support.assert_one_error_line(
        cli("dead", "list", env={**env, "JOBQUEUE_POOLER": "statement"}), "invalid pooler")


def intervals(admin: psycopg.Connection[Any], schema: str,
              ids: list[int]) -> list[tuple[float, float]]:
    rows = admin.execute(sql.SQL(
        "SELECT job_id, phase, extract(epoch FROM at)::float8 FROM {} WHERE job_id = ANY(%s)")
        .format(sql.Identifier(schema, "effects")), (ids,)).fetchall()
    start = {r[0]: r[2] for r in rows if r[1] == "started"}
    end = {r[0]: r[2] for r in rows if r[1] == "finished"}
    assert set(start) == set(end) == set(ids)
    return [(start[i], end[i]) for i in ids]


def most_at_once(spans: list[tuple[float, float]]) -> int:
    events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    return peak


def test_limits_lock_keys_pause_and_cancel_hold_behind_pgbouncer(
        pooled: JobQueue, admin: psycopg.Connection[Any], workers: support.Workers,
        pooled_env: dict[str, str], tmp_path: Path) -> None:
    schema = pooled.schema
    support.create_effects(admin, schema)
    pooled.queues.set_limits("limited", max_running=2)
    pooled.queues.pause("paused")
    paused = [pooled.enqueue("record", {"n": i}, queue="paused", strict=False)
              for i in range(3)]
    limited = [pooled.enqueue("slow", {"seconds": 0.3}, queue="limited", strict=False)
               for _ in range(8)]
    locked = [pooled.enqueue("slow", {"seconds": 0.2}, queue="locks", lock="one-at-a-time",
                             strict=False) for _ in range(5)]
    gate = str(tmp_path / "never")  # never created: the job runs until cancelled
    stuck = pooled.enqueue("slow", {"seconds": 0, "gate": gate}, queue="locks", strict=False)
    fleet = [workers.start("--pooler", "transaction", "-q", "limited,locks,paused",
                           "--concurrency", "8", env=pooled_env, app=RECORDER)
             for _ in range(2)]
    for proc in fleet:
        proc.wait_event("worker.started")
    wait_until(lambda: count(admin, schema, "effects", "phase = 'finished'") >= 13, 60,
               message="the limited and locked jobs to finish")
    assert most_at_once(intervals(admin, schema, limited)) <= 2  # fleet-wide max_running
    assert most_at_once(intervals(admin, schema, locked)) == 1  # one lock key at a time

    # Cancel, with no LISTEN: the worker learns it from its heartbeat.
    wait_until(lambda: count(admin, schema, "effects", "job_id = %s", (stuck,)) == 1, 30,
               message="the gated job to start")
    assert pooled.cancel(stuck) == "cancelling"
    wait_until(lambda: count(admin, schema, "dead_jobs", "id = %s AND reason = 'cancelled'",
                             (stuck,)) == 1, 30, message="the cancel to land")

    # Paused all along: nothing of it ran; resumed, it all runs.
    assert count(admin, schema, "effects", "job_id = ANY(%s)", (paused,)) == 0
    pooled.queues.resume("paused")
    wait_until(lambda: count(admin, schema, "effects", "job_id = ANY(%s)", (paused,)) == 3, 30,
               message="the resumed queue to run")
    for proc in fleet:
        assert proc.stop() == 0, proc.log()
        assert problems(proc) == []
    assert count(admin, schema, "jobs") == 0


def test_the_metrics_gauges_are_read_behind_pgbouncer(
        pooled: JobQueue, admin: psycopg.Connection[Any]) -> None:
    @pooled.task()
    def noop() -> None:
        return None

    pooled.enqueue("noop", queue="elsewhere")  # a queue this worker does not serve: stays ready
    with worker_thread(pooled, metrics_port=0, metrics_addr="127.0.0.1",
                       metrics_interval=0.2) as worker:
        gauges = worker.services["gauges"]
        wait_until(lambda: getattr(gauges, "refreshes", 0) >= 2, 15,
                   message="two gauge rounds under the transaction-scoped lock")
        url = f"http://127.0.0.1:{worker.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            body = response.read().decode()
    ready = [line for line in body.splitlines()
             if 'queue="elsewhere"' in line and not line.startswith("#")]
    assert ready, body
    assert count(admin, pooled.schema, "jobs") == 1


def test_results_history_and_transactional_handlers_behind_pgbouncer(
        pooled: JobQueue, bouncer_dsn: str, pg_dsn: str, migrated: str,
        admin: psycopg.Connection[Any]) -> None:
    """Results by polling (no session to LISTEN on) or by NOTIFY over listen_dsn; a
    transactional handler's transaction is one server transaction, pooler or not."""
    admin.execute(sql.SQL("CREATE TABLE {} (job_id bigint)").format(
        sql.Identifier(migrated, "shipped")))
    insert = sql.SQL("INSERT INTO {} VALUES (%s)").format(sql.Identifier(migrated, "shipped"))

    @pooled.task(transactional=True, pass_context=True, max_attempts=2)
    def ship(ctx: Any, n: int) -> int:
        ctx.conn.execute(insert, (ctx.id,))
        if ctx.attempt == 1 and n % 2:
            raise RuntimeError("rolled back, then retried")
        ctx.progress(1, 1)
        return n * 10

    ids = [pooled.enqueue(ship, {"n": n}) for n in range(6)]
    listening = JobQueue(bouncer_dsn, schema=migrated, pooler="transaction", listen_dsn=pg_dsn)
    try:
        with worker_thread(pooled):
            assert pooled.results.poll_only and not listening.results.poll_only
            assert [pooled.result(i, timeout=30) for i in ids[:3]] == [0, 10, 20]
            assert [listening.result(i, timeout=30) for i in ids[3:]] == [30, 40, 50]
    finally:
        listening.close()
    assert sorted(r[0] for r in admin.execute(sql.SQL("SELECT job_id FROM {}").format(
        sql.Identifier(migrated, "shipped"))).fetchall()) == ids
    assert {pooled.job(i).state for i in ids} == {"succeeded"}
    assert {e.id for e in pooled.history(limit=10)} == set(ids)
