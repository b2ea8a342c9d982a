"""Cron across a fleet of real `jobqueue worker` processes, and `jobqueue cron list`.

Three workers, each with a scheduler, share a ``*/1 * * * * *`` schedule for
20 ticks, and one of them is SIGKILLed halfway: every tick gets exactly one
job, none is missed. Then a 3-second job on a 1-second schedule with
overlap="skip", sampled continuously: never two runs at once. The apps are in
``tests/apps/cron_app.py``; each run records the tick its job was fired for.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections import defaultdict
from datetime import datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg import sql

from tests.acceptance import support
from tests.apps.cron_app import CRON_RUNS_DDL
from tests.helpers import wait_until

FLEET = "tests.apps.cron_app:fleet"
OVERLAP = "tests.apps.cron_app:overlap"
ONE_SECOND = timedelta(seconds=1)


def create_runs(admin: psycopg.Connection[Any], schema: str) -> None:
    admin.execute(sql.SQL(CRON_RUNS_DDL).format(sql.Identifier(schema)))


def rows(admin: psycopg.Connection[Any], query: sql.Composed,
         *params: Any) -> list[tuple[Any, ...]]:
    return [tuple(r) for r in admin.execute(query, params).fetchall()]


def distinct_ticks(admin: psycopg.Connection[Any], schema: str) -> int:
    row = admin.execute(sql.SQL("SELECT count(DISTINCT tick) FROM {}")
                        .format(sql.Identifier(schema, "cron_runs"))).fetchone()
    assert row is not None
    return int(row[0])


@pytest.mark.slow
def test_three_schedulers_fire_exactly_one_job_per_second(
        migrated: str, admin: psycopg.Connection[Any], workers: support.Workers,
        cli: support.Cli) -> None:
    schema = migrated
    create_runs(admin, schema)
    fleet = [workers.start("--concurrency", "4", app=FLEET) for _ in range(3)]
    for proc in fleet:
        proc.wait_event("worker.started")

    wait_until(lambda: distinct_ticks(admin, schema) >= 8, 60, interval=0.1,
               message="eight ticks to run")
    # Kill one scheduler without warning, leader or not: the others go on.
    victim, survivors = fleet[0], fleet[1:]
    victim.kill()
    wait_until(lambda: distinct_ticks(admin, schema) >= 20, 60, interval=0.1,
               message="twenty ticks to run")
    for proc in survivors:
        assert proc.stop() == 0, proc.log()

    # Every job fired for the schedule: those that ran, and any still in jobs
    # (fired as the workers stopped, or held by the killed worker).
    by_tick: dict[datetime, set[int]] = defaultdict(set)
    q = sql.SQL
    for job_id, tick, key in rows(admin, q("SELECT job_id, tick, unique_key FROM {}")
                                  .format(sql.Identifier(schema, "cron_runs"))):
        assert key == f"cron:every-second:{tick.isoformat()}"
        by_tick[tick].add(job_id)
    for job_id, tick in rows(admin, q("SELECT id, run_at FROM {} WHERE cron_name = %s")
                             .format(sql.Identifier(schema, "jobs")), "every-second"):
        by_tick[tick].add(job_id)
    assert rows(admin, q("SELECT id FROM {}").format(sql.Identifier(schema, "dead_jobs"))) == []

    ticks = sorted(by_tick)
    duplicates = {t: ids for t, ids in by_tick.items() if len(ids) > 1}
    assert duplicates == {}, f"ticks fired more than once: {duplicates}"
    gaps = [(a, b) for a, b in itertools.pairwise(ticks) if b - a != ONE_SECOND]
    assert gaps == [], f"ticks missed between: {gaps}"
    assert len(ticks) >= 20 and all(t.microsecond == 0 for t in ticks)

    fired_by = {p.pid: len(p.events("cron.fired")) for p in fleet}
    lateness = [r[0] for r in rows(admin, q(
        "SELECT extract(epoch FROM min(at) - tick)::float8 FROM {} GROUP BY tick")
        .format(sql.Identifier(schema, "cron_runs")))]
    print(f"\ncron fleet: {len(ticks)} ticks, one job each; jobs fired per worker "
          f"{fired_by}; tick to run: median {sorted(lateness)[len(lateness) // 2]:.3f}s, "
          f"max {max(lateness):.3f}s")

    # What `jobqueue cron list` shows for it.
    table = cli.ok("cron", "list")
    assert table.splitlines()[0].split() == ["name", "expression", "timezone", "task", "queue",
                                             "overlap", "last", "fire", "next", "fire"]
    assert "every-second  */1 * * * * *  UTC" in table, table
    (listed,) = json.loads(cli.ok("cron", "list", "--json"))
    last = datetime.fromisoformat(listed["last_fire_at"])
    assert {k: listed[k] for k in ("name", "expression", "timezone", "task", "queue", "overlap",
                                   "catch_up")} == {
        "name": "every-second", "expression": "*/1 * * * * *", "timezone": "UTC",
        "task": "beat", "queue": "default", "overlap": "allow", "catch_up": 3}
    assert last == ticks[-1]
    assert datetime.fromisoformat(listed["next_fire_at"]) == last + ONE_SECOND


class Sampler:
    """Counts the schedule's live and running jobs every few milliseconds, in a thread."""

    def __init__(self, dsn: str, schema: str, name: str) -> None:
        self.query = sql.SQL(
            "SELECT count(*), count(*) FILTER (WHERE state = 'running') FROM {} "
            "WHERE cron_name = %s").format(sql.Identifier(schema, "jobs"))
        self.dsn, self.name = dsn, name
        self.samples: list[tuple[int, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            while not self._stop.wait(0.005):
                row = conn.execute(self.query, (self.name,)).fetchone()
                assert row is not None
                self.samples.append((int(row[0]), int(row[1])))

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


@pytest.mark.slow
def test_three_second_job_on_a_one_second_schedule_never_overlaps(
        pg_dsn: str, migrated: str, admin: psycopg.Connection[Any],
        workers: support.Workers) -> None:
    schema = migrated
    create_runs(admin, schema)
    # Two workers with free slots: only overlap protection keeps runs apart.
    fleet = [workers.start("--concurrency", "4", app=OVERLAP) for _ in range(2)]
    for proc in fleet:
        proc.wait_event("worker.started")

    def finished() -> int:
        return len(rows(admin, sql.SQL("SELECT 1 FROM {} WHERE phase = 'finished'")
                        .format(sql.Identifier(schema, "cron_runs"))))

    started = time.monotonic()
    with Sampler(pg_dsn, schema, "slow-every-second") as sampler:
        wait_until(lambda: finished() >= 3, 60, interval=0.1, message="three runs to finish")
    elapsed = time.monotonic() - started
    for proc in fleet:
        assert proc.stop() == 0, proc.log()

    # Sampled continuously: at most one job of the schedule existed at any time,
    # so at most one ran; and the sampler did see it running.
    assert len(sampler.samples) > 100
    assert max(live for live, _ in sampler.samples) == 1
    assert max(running for _, running in sampler.samples) == 1

    runs: dict[int, dict[str, Any]] = defaultdict(dict)
    for job_id, tick, phase, when in rows(admin, sql.SQL(
            "SELECT job_id, tick, phase, at FROM {} ORDER BY at")
            .format(sql.Identifier(schema, "cron_runs"))):
        runs[job_id]["tick"] = tick
        runs[job_id][phase] = when
    spans = sorted((r["started"], r.get("finished"), r["tick"]) for r in runs.values())
    assert len({tick for _, _, tick in spans}) == len(spans)  # one job per fired tick
    for (_, end, tick), (next_start, _, next_tick) in itertools.pairwise(spans):
        assert end is not None and next_start >= end, "two runs overlapped"
        # The ticks in between were skipped, not queued up for later.
        assert next_tick - tick >= timedelta(seconds=3)
    skipped = sum(len(p.events("cron.skipped")) for p in fleet)
    assert skipped >= len(spans) - 1
    print(f"\ncron overlap: {len(spans)} runs in {elapsed:.1f}s, {skipped} ticks skipped, "
          f"{len(sampler.samples)} samples, ticks "
          f"{[t.strftime('%H:%M:%S') for _, _, t in spans]}")


def test_cron_list_without_schedules_and_without_schema(
        migrated: str, cli: support.Cli, env: dict[str, str]) -> None:
    assert cli.ok("cron", "list").strip() == \
        "no schedules: they are stored when a worker whose app defines them starts"
    assert json.loads(cli.ok("cron", "list", "--json")) == []
    result = cli("cron", "list", env={**env, "JOBQUEUE_SCHEMA": migrated + "_nope"})
    support.assert_one_error_line(result, "not migrated", "jobqueue migrate")
