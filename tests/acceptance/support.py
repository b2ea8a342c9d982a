"""Helpers for acceptance tests: running ``python -m jobqueue`` and its workers as a user would.

:class:`Cli` runs one command to completion; :class:`WorkerProcess` is a
``jobqueue worker`` running in the background, its stderr (JSON log lines)
going to a file, because a pipe that nobody reads fills up and blocks the
worker. The fixtures in ``conftest.py`` build both with an environment that
points at the test database and schema.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from tests.apps.recorder import EFFECTS_DDL
from tests.helpers import wait_until

REPO = Path(__file__).resolve().parents[2]
JOBQUEUE = [sys.executable, "-m", "jobqueue"]
APP = "tests.apps.recorder:app"


def cli_env(dsn: str, schema: str, home: Path) -> dict[str, str]:
    """The environment of a person who exported JOBQUEUE_DSN and JOBQUEUE_SCHEMA."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBQUEUE_")}
    env.update({
        "JOBQUEUE_DSN": dsn,
        "JOBQUEUE_SCHEMA": schema,
        # Should a command ever fall back to the embedded default, keep it away
        # from the real user's data directory.
        "JOBQUEUE_HOME": str(home),
        "PYTHONUNBUFFERED": "1",
    })
    return env


@dataclass
class Cli:
    """Runs ``python -m jobqueue ARGS`` from the repository root and waits for it."""

    env: dict[str, str]

    def __call__(self, *args: str, env: dict[str, str] | None = None,
                 timeout: float = 90.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*JOBQUEUE, *args], cwd=REPO, env={**self.env, **(env or {})},
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout,
            check=False)

    def ok(self, *args: str, env: dict[str, str] | None = None) -> str:
        """Run a command that must succeed; its stdout."""
        result = self(*args, env=env)
        assert result.returncode == 0, describe(result)
        assert "Traceback" not in result.stderr, describe(result)
        return result.stdout


def describe(result: subprocess.CompletedProcess[str]) -> str:
    return (f"{result.args!r} exited {result.returncode}\n"
            f"--- stdout ---\n{result.stdout}\n--- stderr ---\n{result.stderr}")


@dataclass
class WorkerProcess:
    """One ``jobqueue worker`` subprocess; stderr (its JSON log) goes to ``log_path``."""

    popen: subprocess.Popen[bytes]
    log_path: Path
    args: list[str] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        """The JSON log records written so far, optionally only those of one event."""
        found = []
        for line in self.log().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and (name is None or record.get("event") == name):
                found.append(record)
        return found

    def wait_event(self, name: str, timeout: float = 30.0) -> dict[str, Any]:
        def seen() -> dict[str, Any] | None:
            if self.popen.poll() is not None and not self.events(name):
                raise AssertionError(f"worker exited {self.popen.returncode} before logging "
                                     f"{name}\n{self.log()}")
            events = self.events(name)
            return events[0] if events else None

        return wait_until(seen, timeout, message=f"worker to log {name}")  # type: ignore[no-any-return]

    def signal(self, sig: signal.Signals = signal.SIGTERM) -> None:
        self.popen.send_signal(sig)

    def wait(self, timeout: float = 60.0) -> int:
        """Wait for the process to exit; fail (and show the log) if it does not."""
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"worker {self.pid} still running after {timeout}s\n"
                                 f"{self.log()}") from None

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM and wait: the exit code."""
        self.signal(signal.SIGTERM)
        return self.wait(timeout)

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()  # by its own pid, nothing broader
            self.popen.wait(10)


@dataclass
class Workers:
    """Starts worker subprocesses; :meth:`cleanup` kills what is left and prints the logs."""

    env: dict[str, str]
    log_dir: Path
    started: list[WorkerProcess] = field(default_factory=list)

    def start(self, *args: str, app: str | None = APP,
              env: dict[str, str] | None = None) -> WorkerProcess:
        argv = [*JOBQUEUE, "worker", *(["--app", app] if app else []), *args]
        log_path = self.log_dir / f"worker-{len(self.started) + 1}.log"
        with log_path.open("wb") as log:
            popen = subprocess.Popen(argv, cwd=REPO, env={**self.env, **(env or {})},
                                     stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        proc = WorkerProcess(popen, log_path, argv)
        self.started.append(proc)
        return proc

    def cleanup(self) -> None:
        for proc in self.started:
            proc.kill()
            # Shown by pytest only when the test failed: the worker's side of the story.
            print(f"===== {' '.join(proc.args[2:])} (pid {proc.pid}, "
                  f"exit {proc.popen.returncode}) =====\n{proc.log()}")


def assert_one_error_line(result: subprocess.CompletedProcess[str], *fragments: str,
                          logs_allowed: bool = False) -> str:
    """A failed command that said so in one ``error:`` line and no traceback.

    ``logs_allowed``: a worker also writes its JSON log records to stderr; those
    may surround the error line, but nothing else may.
    """
    context = describe(result)
    assert result.returncode != 0, context
    assert "Traceback" not in result.stdout + result.stderr, context
    assert result.stdout.strip() == "", context
    lines = [line for line in result.stderr.splitlines()
             if not (logs_allowed and _is_json_record(line))]
    assert len(lines) == 1, context
    assert lines[0].startswith("error: "), context
    for fragment in fragments:
        assert fragment in lines[0], context
    return lines[0]


def _is_json_record(line: str) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


def closed_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (the OS just handed it out)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def metrics_args() -> tuple[int, list[str]]:
    """A free port, and the worker flags that serve its /metrics there on loopback."""
    port = closed_port()
    return port, ["--metrics-port", str(port), "--metrics-addr", "127.0.0.1"]


def dsn_with(dsn: str, **changes: Any) -> str:
    """``dsn`` with some connection parameters replaced (works for URIs and key=value)."""
    params = psycopg.conninfo.conninfo_to_dict(dsn)
    params.update(changes)
    return psycopg.conninfo.make_conninfo("", **params)


def create_effects(admin: psycopg.Connection[Any], schema: str) -> None:
    admin.execute(sql.SQL(EFFECTS_DDL).format(sql.Identifier(schema)))


def effects(admin: psycopg.Connection[Any], schema: str, phase: str) -> tuple[int, int]:
    """``(rows, distinct jobs)`` recorded in ``phase``."""
    row = admin.execute(
        sql.SQL("SELECT count(*), count(DISTINCT job_id) FROM {} WHERE phase = %s")
        .format(sql.Identifier(schema, "effects")), (phase,)).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])
