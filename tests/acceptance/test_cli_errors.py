"""Errors a person can cause: one `error:` line on stderr, a non-zero exit, no traceback.

And a password in the DSN never shows up in anything the CLI prints, whether
the command fails or succeeds.
"""

from __future__ import annotations

import json
import subprocess
from typing import Any

import psycopg
import pytest

from tests.acceptance.support import (
    APP,
    Cli,
    WorkerProcess,
    Workers,
    assert_one_error_line,
    closed_port,
    create_effects,
    dsn_with,
)
from tests.helpers import count

SECRET = "Pa55-w0rd-never-printed"


# -- the database is wrong -------------------------------------------------------------------

BAD_SYNTAX = [
    "host=localhost port",                       # key without '='
    f"host=localhost password='{SECRET}",         # unterminated quote
    f"postgresql://ada:{SECRET}@[::1/db",         # libpq echoes the whole URI back
    f"postgresql://ada:%zz{SECRET}@localhost/db",  # ... or the bad %-token of the password
]


@pytest.mark.parametrize("dsn", BAD_SYNTAX)
@pytest.mark.parametrize("command", [["stats"], ["migrate"], ["enqueue", "ping"]])
def test_bad_dsn_syntax(cli: Cli, command: list[str], dsn: str) -> None:
    result = cli(*command, "--dsn", dsn)
    assert_one_error_line(result, "invalid DSN")
    assert SECRET not in result.stderr


@pytest.mark.parametrize("command", [["stats"], ["migrate"], ["enqueue", "ping"]])
def test_unreachable_server(cli: Cli, command: list[str]) -> None:
    port = closed_port()
    dsn = f"postgresql://ada:{SECRET}@127.0.0.1:{port}/app?connect_timeout=3"
    result = cli(*command, "--dsn", dsn)
    assert_one_error_line(result, "database unavailable", str(port))
    assert SECRET not in result.stderr


def test_worker_on_an_unreachable_server(workers: Workers) -> None:
    port = closed_port()
    worker = workers.start("--dsn", f"postgresql://ada:{SECRET}@127.0.0.1:{port}/app")
    result = finished(worker)
    assert_one_error_line(result, "database unavailable", logs_allowed=True)
    assert SECRET not in result.stderr


@pytest.mark.parametrize("change", [{"user": "jqt_no_such_role"},
                                    {"dbname": "jqt_no_such_database"}])
def test_wrong_role_or_database(cli: Cli, pg_dsn: str, change: dict[str, str]) -> None:
    # Both test servers trust every local connection, so a wrong *password* is
    # not refused there; a role or database that does not exist is.
    dsn = dsn_with(pg_dsn, password=SECRET, **change)
    result = cli("stats", "--dsn", dsn)
    assert_one_error_line(result, "database unavailable", next(iter(change.values())))
    assert SECRET not in result.stderr


# -- the schema is not migrated ------------------------------------------------------------


@pytest.mark.parametrize("command", [["stats"], ["stats", "--json"], ["enqueue", "ping"]])
def test_unmigrated_schema(cli: Cli, schema: str, command: list[str]) -> None:
    result = cli(*command)
    assert_one_error_line(result, f"schema {schema!r} is not migrated",
                          f"jobqueue migrate --schema {schema}")


def test_worker_on_an_unmigrated_schema(workers: Workers, schema: str) -> None:
    result = finished(workers.start())
    assert_one_error_line(result, f"schema {schema!r} is not migrated",
                          f"jobqueue migrate --schema {schema}", logs_allowed=True)


# -- bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize(("args", "message"), [
    ('{"n": 1', "--args is not valid JSON"),
    ("n=1", "--args is not valid JSON"),
    ("[1, 2]", "--args must be a JSON object, got list"),
    ('"text"', "--args must be a JSON object, got str"),
    ("null", "--args must be a JSON object, got NoneType"),
])
def test_bad_args(cli: Cli, admin: psycopg.Connection[Any], schema: str, args: str,
                  message: str) -> None:
    cli.ok("migrate")
    assert_one_error_line(cli("enqueue", "ping", "--args", args), message)
    assert count(admin, schema, "jobs") == 0


@pytest.mark.parametrize(("app", "message"), [
    ("tests.apps.no_such_module:app", "cannot import 'tests.apps.no_such_module'"),
    ("tests.apps.recorder:no_such_attribute", "has no attribute 'no_such_attribute'"),
    ("tests.apps.recorder:not_a_queue", "is a dict, not a jobqueue.JobQueue"),
    ("tests.apps.recorder", "--app must look like 'package.module:app'"),
])
def test_bad_app(cli: Cli, workers: Workers, app: str, message: str) -> None:
    assert_one_error_line(finished(workers.start(app=app)), message, logs_allowed=True)
    assert_one_error_line(cli("enqueue", "record", "--app", app), message)


def test_worker_without_app(workers: Workers) -> None:
    assert_one_error_line(finished(workers.start(app=None)), "--app is required",
                          logs_allowed=True)


@pytest.mark.parametrize("argv", [
    ["stats", "--no-such-flag"],
    ["enqueue"],                                   # TASK missing
    ["enqueue", "ping", "--delay", "soon"],        # not a number
    ["worker", "--app", APP, "--concurrency", "0"],  # below the minimum
    ["no-such-command"],
])
def test_usage_errors(cli: Cli, argv: list[str]) -> None:
    result = cli(*argv)
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr + result.stdout
    assert "Usage:" in result.stderr


# -- a password never leaks ---------------------------------------------------------------


def test_password_never_printed_on_success(cli: Cli, workers: Workers, pg_dsn: str,
                                           admin: psycopg.Connection[Any], schema: str) -> None:
    # Trust authentication ignores the password, so every command succeeds with it.
    dsn = dsn_with(pg_dsn, password=SECRET)
    printed = []
    for argv in (["migrate"], ["enqueue", "record", "--args", '{"n": 1}'],
                 ["enqueue", "record", "--args", '{"n": 2}', "--json"],
                 ["stats"], ["stats", "--json"]):
        result = cli(*argv, env={"JOBQUEUE_DSN": dsn})
        assert result.returncode == 0, result
        printed.append(result.stdout + result.stderr)
    create_effects(admin, schema)
    worker = workers.start("--burst", env={"JOBQUEUE_DSN": dsn})
    assert worker.wait() == 0, worker.log()
    assert count(admin, schema, "jobs") == 0
    assert worker.events("worker.starting"), worker.log()  # it did log, and we read it
    printed.append(worker.log())
    assert all(SECRET not in text for text in printed)
    assert json.loads(printed[2].strip())["task"] == "record"


def finished(worker: WorkerProcess) -> subprocess.CompletedProcess[str]:
    """The outcome of a worker expected to give up at once (its log is its stderr)."""
    code = worker.wait(60)
    return subprocess.CompletedProcess(worker.args, code, stdout="", stderr=worker.log())
