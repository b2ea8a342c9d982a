"""`jobqueue demo --dsn ...`: the README's first command tells the whole story and exits 0."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from tests.acceptance.support import Cli, closed_port, dsn_with


@pytest.fixture
def demo_dsn(pg_dsn: str, admin: psycopg.Connection[Any]) -> Iterator[str]:
    """A database of its own: the demo always uses schema jobqueue_demo, and a
    concurrent run elsewhere on a shared server must not see this one."""
    name = "jqt_demo_" + uuid.uuid4().hex[:12]
    admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    yield dsn_with(pg_dsn, dbname=name)
    admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def outcomes(out: str) -> dict[str, list[str]]:
    """task -> [outcome, attempts, detail...] from the demo's table."""
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:3] == ["job", "task",
                                                                             "outcome"])
    rows: dict[str, list[str]] = {}
    for line in lines[header + 2:]:
        if not line.strip():
            break
        cells = line.split()
        outcome_len = 2 if cells[2:4] == ["never", "existed"] else 1
        rows[cells[1]] = [" ".join(cells[2:2 + outcome_len]), *cells[2 + outcome_len:]]
    return rows


def test_demo_runs_end_to_end(cli: Cli, demo_dsn: str) -> None:
    # $JOBQUEUE_DSN points at nothing: the demo must use --dsn, and must not fall
    # back to the embedded default.
    result = cli("demo", "--dsn", demo_dsn,
                 env={"JOBQUEUE_DSN": f"postgresql://nobody@127.0.0.1:{closed_port()}/x"})
    assert result.returncode == 0, result
    assert "Traceback" not in result.stderr
    rows = outcomes(result.stdout)
    assert set(rows) == {"send_welcome_email", "sync_to_crm", "charge_card", "audit_log"}
    assert rows["send_welcome_email"][:3] == ["succeeded", "1", "first"]
    assert rows["sync_to_crm"][:3] == ["succeeded", "3", "retried"]
    assert rows["charge_card"][:3] == ["dead", "3", "exhausted:"]
    assert rows["audit_log"][:2] == ["never existed", "0"]

    # What the table says is what the database holds.
    with psycopg.connect(demo_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM jobqueue_demo.jobs").fetchone() == (0,)
        dead = conn.execute("SELECT task, reason, attempts FROM jobqueue_demo.dead_jobs")
        assert dead.fetchall() == [("charge_card", "exhausted", 3)]
