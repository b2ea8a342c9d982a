"""`jobqueue enqueue` writes the row a user asked for; `jobqueue stats` counts it right."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg

from jobqueue import JobQueue
from tests.acceptance.support import Cli, Workers, assert_one_error_line, create_effects, effects
from tests.helpers import count, wait_until


def job_row(admin: psycopg.Connection[Any], schema: str, job_id: int) -> dict[str, Any]:
    cur = admin.execute(
        f'SELECT queue, task, args, priority, state, attempts, max_attempts, locked_by, '
        f'run_at - created_at AS delay FROM "{schema}".jobs WHERE id = %s', (job_id,))
    names = [d.name for d in cur.description or ()]
    row = cur.fetchone()
    assert row is not None, f"job {job_id} not in jobs"
    return dict(zip(names, row, strict=True))


def test_enqueue_creates_the_row_with_every_option(cli: Cli, admin: psycopg.Connection[Any],
                                                   schema: str) -> None:
    cli.ok("migrate")
    out = cli.ok("enqueue", "send_invoice", "--args", '{"order": 17, "to": "ada@example.com"}',
                 "--queue", "billing", "--delay", "60", "--priority", "-3", "--max-attempts", "4",
                 "--json")
    reply = json.loads(out)
    assert reply["task"] == "send_invoice"
    assert job_row(admin, schema, reply["id"]) == {
        "queue": "billing", "task": "send_invoice", "args": {"order": 17, "to": "ada@example.com"},
        "priority": -3, "state": "queued", "attempts": 0, "max_attempts": 4, "locked_by": None,
        # run_at and created_at come from the same statement's now(): exact.
        "delay": timedelta(seconds=60),
    }

    plain = cli.ok("enqueue", "ping")
    assert plain.startswith("enqueued job ") and "(ping)" in plain
    ping_id = int(plain.split()[2])
    # No --max-attempts: the worker that claims it applies its declaration of the task.
    assert job_row(admin, schema, ping_id) == {
        "queue": "default", "task": "ping", "args": {}, "priority": 0, "state": "queued",
        "attempts": 0, "max_attempts": None, "locked_by": None, "delay": timedelta(0),
    }
    assert count(admin, schema, "jobs") == 2


def test_enqueue_with_app_rejects_an_unknown_task(cli: Cli, admin: psycopg.Connection[Any],
                                                  schema: str) -> None:
    cli.ok("migrate")
    result = cli("enqueue", "no_such_task", "--app", "tests.apps.recorder:app")
    assert_one_error_line(result, "unknown task 'no_such_task'")
    cli.ok("enqueue", "record", "--args", '{"n": 1}', "--app", "tests.apps.recorder:app")
    assert count(admin, schema, "jobs") == 1


def stats_table(out: str) -> dict[str, dict[str, str]]:
    """queue -> {column: cell} from the aligned table; columns found from the dashes line."""
    lines = out.rstrip().splitlines()
    spans, pos = [], 0
    for dashes in lines[1].split("  "):  # columns are joined by two spaces
        spans.append((pos, pos + len(dashes)))
        pos += len(dashes) + 2
    rows = [[line[a:b].strip() for a, b in spans] for line in lines]
    return {row[0]: dict(zip(rows[0], row, strict=True)) for row in rows[2:]}


def counts(row: dict[str, str]) -> list[str]:
    return [row["ready"], row["scheduled"], row["running"], row["dead"]]


def test_stats_counts_ready_scheduled_running_and_dead_per_queue(
        cli: Cli, workers: Workers, app: JobQueue, admin: psycopg.Connection[Any], schema: str,
        tmp_path: Path) -> None:
    create_effects(admin, schema)
    assert cli.ok("stats").strip() == "no jobs: every queue is empty"
    assert json.loads(cli.ok("stats", "--json")) == []

    # The setup goes through the library (the CLI's enqueue is tested above): fewer
    # interpreter start-ups keep this test quick on a busy machine.
    # alpha: nobody works it. Two ready, one scheduled for an hour from now.
    app.enqueue_many([("record", {"n": 1}), ("record", {"n": 2})], queue="alpha", strict=False)
    app.enqueue("record", {"n": 3}, queue="alpha", delay=3600, strict=False)
    # beta: a worker holds one job running (behind a gate) and dead-letters a task it
    # does not know.
    gate = tmp_path / "gate"
    app.enqueue("slow", {"seconds": 0, "gate": str(gate)}, queue="beta", strict=False)
    app.enqueue("no_such_task", queue="beta", strict=False)
    worker = workers.start("--queues", "beta", "--concurrency", "4")
    wait_until(lambda: effects(admin, schema, "started")[0] == 1
               and count(admin, schema, "dead_jobs") == 1, 30,
               message="one running and one dead job in beta")

    by_queue = {s["queue"]: s for s in json.loads(cli.ok("stats", "--json"))}
    assert set(by_queue) == {"alpha", "beta"}
    alpha, beta = by_queue["alpha"], by_queue["beta"]
    assert (alpha["queued"], alpha["scheduled"], alpha["running"], alpha["dead"]) == (2, 1, 0, 0)
    assert alpha["oldest_age"] is not None and alpha["oldest_age"] >= 0
    assert (beta["queued"], beta["scheduled"], beta["running"], beta["dead"]) == (0, 0, 1, 1)
    assert beta["oldest_age"] is None

    shown = stats_table(cli.ok("stats"))
    assert set(shown) == {"alpha", "beta"}
    assert counts(shown["alpha"]) == ["2", "1", "0", "0"]
    assert counts(shown["beta"]) == ["0", "0", "1", "1"]
    assert shown["alpha"]["oldest ready"] != "-" and shown["beta"]["oldest ready"] == "-"

    gate.touch()
    wait_until(lambda: effects(admin, schema, "finished")[0] == 1, 30, message="gated job")
    assert worker.stop() == 0
    by_queue = {s["queue"]: s for s in json.loads(cli.ok("stats", "--json"))}
    assert (by_queue["beta"]["running"], by_queue["beta"]["dead"]) == (0, 1)
