"""The dead-jobs workflow from the shell: list, show, count, replay, purge.

Jobs die for real (a worker that does not know their task dead-letters them
with reason ``unknown_task``), are replayed through the CLI, and then run on a
worker that knows the task; every step counts rows in ``jobs`` and
``dead_jobs``.
"""

from __future__ import annotations

import json
from typing import Any

import psycopg
from psycopg import sql

from jobqueue import JobQueue
from jobqueue.dead import DeadFilter
from tests.acceptance.support import Cli, Workers, create_effects, effects
from tests.helpers import count

STRANGER = "tests.apps.notify_app:app"  # knows only `noop`: every other task dies


def _kill_all(app: JobQueue, workers: Workers) -> dict[str, list[int]]:
    """Three `record` jobs and two `other` jobs, all dead with reason unknown_task."""
    record = app.enqueue_many([("record", {"n": n}) for n in range(3)], strict=False)
    other = app.enqueue_many([("other", {"n": n}) for n in range(2)], strict=False)
    worker = workers.start("--burst", app=STRANGER)
    assert worker.wait(60) == 0, worker.log()
    return {"record": record, "other": other}


def _dead(admin: psycopg.Connection[Any], schema: str) -> dict[int, tuple[Any, ...]]:
    rows = admin.execute(sql.SQL(
        "SELECT id, task, reason, replayed_at, replayed_as, replay_count FROM {}").format(
            sql.Identifier(schema, "dead_jobs"))).fetchall()
    return {int(r[0]): tuple(r[1:]) for r in rows}


def test_replay_dry_run_changes_nothing_and_task_filter_moves_exactly_the_matching_rows(
        app: JobQueue, cli: Cli, workers: Workers, admin: psycopg.Connection[Any],
        schema: str) -> None:
    create_effects(admin, schema)
    ids = _kill_all(app, workers)
    assert count(admin, schema, "jobs") == 0
    before = _dead(admin, schema)
    assert set(before) == {*ids["record"], *ids["other"]}
    assert {row[1] for row in before.values()} == {"unknown_task"}

    listed = json.loads(cli.ok("dead", "list", "--json"))
    assert sorted(r["id"] for r in listed) == sorted(before)
    assert sorted(r["id"] for r in json.loads(cli.ok("dead", "list", "--task", "other",
                                                     "--json"))) == ids["other"]

    dry = json.loads(cli.ok("dead", "replay", "--task", "record", "--dry-run", "--json"))
    assert sorted(dry["would_replay"]) == ids["record"]
    assert _dead(admin, schema) == before  # nothing marked
    assert count(admin, schema, "jobs") == 0  # nothing enqueued

    out = json.loads(cli.ok("dead", "replay", "--task", "record", "--json"))
    replayed = {int(k): v for k, v in out["replayed"].items()}
    assert sorted(replayed) == ids["record"] and out["skipped"] == 0
    after = _dead(admin, schema)
    for dead_id in ids["record"]:
        _task, reason, replayed_at, replayed_as, replays = after[dead_id]
        assert reason == "unknown_task"
        assert replayed_at is not None and replayed_as == replayed[dead_id] and replays == 1
    for dead_id in ids["other"]:
        assert after[dead_id] == before[dead_id]  # untouched
    new_jobs = admin.execute(sql.SQL(
        "SELECT id, task, attempts, replay_of FROM {} ORDER BY id").format(
            sql.Identifier(schema, "jobs"))).fetchall()
    assert [(r[1], r[2]) for r in new_jobs] == [("record", 0)] * 3
    assert {r[3] for r in new_jobs} == set(ids["record"])

    # Replayed rows are hidden from list and never replayed twice by a filter.
    assert sorted(r["id"] for r in json.loads(cli.ok("dead", "list", "--json"))) == ids["other"]
    again = json.loads(cli.ok("dead", "replay", "--task", "record", "--json"))
    assert again["replayed"] == {}

    # The replayed jobs run on a worker that knows the task.
    worker = workers.start("--burst")
    assert worker.wait(60) == 0, worker.log()
    assert effects(admin, schema, "done") == (3, 3)
    assert count(admin, schema, "jobs") == 0
    assert count(admin, schema, "dead_jobs") == 5


def test_show_count_and_purge(app: JobQueue, cli: Cli, workers: Workers,
                              admin: psycopg.Connection[Any], schema: str) -> None:
    ids = _kill_all(app, workers)
    first = ids["record"][0]
    shown = cli.ok("dead", "show", str(first))
    assert "reason:     unknown_task" in shown and "UnknownTask" in shown
    detail = json.loads(cli.ok("dead", "show", str(first), "--json"))
    assert detail["args"] == {"n": 0} and detail["errors"][0]["type"] == "UnknownTask"
    missing = cli("dead", "show", "999999")
    assert missing.returncode == 1 and missing.stderr.startswith("error: no dead job")

    assert cli("dead", "count", "--fail-above", "4").returncode == 1
    assert cli.ok("dead", "count", "--fail-above", "5").strip() == "5"
    assert cli.ok("dead", "count", "--task", "other").strip() == "2"

    refused = cli("dead", "purge", "--task", "other")
    assert refused.returncode == 1 and "--yes" in refused.stderr
    assert count(admin, schema, "dead_jobs") == 5
    assert cli("dead", "purge").returncode == 1  # no selector at all
    assert "purged 2" in cli.ok("dead", "purge", "--task", "other", "--yes")
    assert sorted(_dead(admin, schema)) == ids["record"]
    assert "purged 0" in cli.ok("dead", "purge", "--older-than", "1h", "--yes")
    assert "purged 3" in cli.ok("dead", "purge", "--all", "--yes")
    assert count(admin, schema, "dead_jobs") == 0


def test_python_api_replays_by_filter_inside_the_callers_transaction(
        app: JobQueue, workers: Workers, admin: psycopg.Connection[Any], schema: str,
        pg_dsn: str) -> None:
    ids = _kill_all(app, workers)
    with psycopg.connect(pg_dsn) as conn:
        result = app.dead.replay(DeadFilter(task="other"), conn=conn)
        assert sorted(result.replayed) == ids["other"]
        assert count(admin, schema, "jobs") == 0  # not committed yet
        conn.rollback()
    assert count(admin, schema, "jobs") == 0
    assert all(row[2] is None for row in _dead(admin, schema).values())
    result = app.dead.replay(DeadFilter(ids=(ids["other"][1],)))
    assert list(result.replayed) == [ids["other"][1]]
    assert count(admin, schema, "jobs") == 1
    assert app.dead.count() == 4
    assert [s.id for s in app.dead.list(DeadFilter(task="other"))] == [ids["other"][0]]
