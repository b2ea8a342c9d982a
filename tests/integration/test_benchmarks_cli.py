"""The benchmark suite's command line runs end to end and emits a JSON document that adds up.

Functional only: tiny scenarios against the test database, no assertion on
speed. ``python -m benchmarks all`` runs as a user would run it (a subprocess
from the repository root); every scenario must produce its rows, each row
must account for exactly the jobs it was given, and the ratios must be the
ratios of the reported rates. The peers are exercised when the ``bench``
extra is installed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest

ROOT = Path(__file__).resolve().parents[2]
TINY = ["--drain-jobs", "300", "--tx-jobs", "40", "--clients", "4", "--bulk-jobs", "500",
        "--bulk-batch", "200", "--latency-jobs", "10", "--latency-interval", "0.01",
        "--soak-seconds", "2", "--soak-window", "1", "--soak-hold", "0.5", "--timeout", "60"]


def run_suite(dsn: str, *args: str) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if k != "JOBQUEUE_DSN"}
    proc = subprocess.run([sys.executable, "-m", "benchmarks", *args, "--dsn", dsn, "--json"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    document: dict[str, Any] = json.loads(proc.stdout)
    return document


def leftover_schemas(dsn: str) -> set[str]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute("SELECT nspname FROM pg_namespace "
                            "WHERE nspname LIKE 'jqbench\\_%'").fetchall()
    return {r[0] for r in rows}


def by_scenario(document: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for row in document["results"]:
        out.setdefault(row["scenario"], []).append(row)
    return out


def test_all_scenarios_run_and_the_json_adds_up(pg_dsn: str) -> None:
    before = leftover_schemas(pg_dsn)
    document = run_suite(pg_dsn, "all", "--targets", "raw,jobqueue", *TINY)

    rows = by_scenario(document)
    assert list(rows) == ["drain", "enqueue-tx", "bulk", "latency", "soak"]
    labels = {s: [r["label"] for r in group] for s, group in rows.items()}
    assert labels["drain"] == ["raw: claim 100 + delete", "jobqueue (async handler)",
                               "jobqueue (sync handler)"]
    assert labels["enqueue-tx"] == ["raw: INSERT", "raw: INSERT + NOTIFY", "jobqueue"]
    assert labels["bulk"] == ["raw: INSERT unnest", "raw: COPY", "jobqueue"]
    assert labels["latency"] == ["raw: LISTEN + claim", "jobqueue (async handler)",
                                 "jobqueue (sync handler)"]
    assert labels["soak"] == ["raw: claim 100 + delete", "jobqueue (async handler)"]

    expected_jobs = {"drain": 300, "enqueue-tx": 40, "bulk": 500, "latency": 10}
    for scenario, jobs in expected_jobs.items():
        for row in rows[scenario]:
            assert row["jobs"] == jobs, row
            assert row["jobs_per_second"] > 0
    for scenario in ("drain", "enqueue-tx", "bulk"):
        group = rows[scenario]
        floor = max(r["jobs_per_second"] for r in group if r["target"] == "raw")
        for row in group:
            # No peer in this run: nothing to compare with, and it says so.
            assert row["vs_best_peer"] is None
            assert row["vs_floor"] == pytest.approx(row["jobs_per_second"] / floor, abs=2e-3)
    for row in rows["latency"]:
        assert 0 < row["p50_ms"] <= row["p90_ms"] <= row["p99_ms"] <= row["max_ms"]
    for row in rows["soak"]:
        windows = row["windows"]
        assert len(windows) == 2
        assert [w["window"] for w in windows] == [0, 1]
        assert all(w["rss_bytes"] > 0 for w in windows)
        assert row["jobs"] == sum(w["jobs"] for w in windows)
        assert row["hold"]["end"] > row["hold"]["start"]

    checks = {c["target"]: c for c in document["targets"]}
    assert set(checks) >= {"drain vs raw floor", "enqueue-tx vs raw INSERT", "bulk",
                           "latency p50", "latency p99", "soak last/first window",
                           "soak worker RSS growth"}
    assert document["environment"]["postgres"]
    # Every schema the run created is gone.
    assert leftover_schemas(pg_dsn) == before


def test_a_single_scenario_prints_a_table(pg_dsn: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "JOBQUEUE_DSN"}
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "bulk", "--dsn", pg_dsn,
                           "--targets", "raw,jobqueue", "--bulk-jobs", "300",
                           "--bulk-batch", "100"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert any(line.startswith("| bulk | raw: COPY |") for line in lines), proc.stdout
    assert any(line.startswith("| bulk | jobqueue |") for line in lines), proc.stdout


def test_peers_run_in_their_own_databases(pg_dsn: str) -> None:
    pytest.importorskip("pgqueuer")
    pytest.importorskip("procrastinate")
    # A prefix of its own: another run on the same server keeps its databases.
    prefix = "jqt_" + uuid.uuid4().hex[:10]
    document = run_suite(pg_dsn, "all", "--targets", "jobqueue,pgqueuer,procrastinate",
                         "--peer-db-prefix", prefix,
                         "--scenario", "drain", "--scenario", "bulk", "--drain-jobs", "100",
                         "--bulk-jobs", "300", "--bulk-batch", "100", "--timeout", "60")
    rows = by_scenario(document)
    for scenario, jobs in (("drain", 100), ("bulk", 300)):
        targets = [r["target"] for r in rows[scenario]]
        assert targets[-2:] == ["pgqueuer", "procrastinate"]
        best = max(r["jobs_per_second"] for r in rows[scenario]
                   if r["target"] in ("pgqueuer", "procrastinate"))
        for row in rows[scenario]:
            assert row["jobs"] == jobs
            assert row["vs_floor"] is None  # no raw target in this run
            assert row["vs_best_peer"] == pytest.approx(row["jobs_per_second"] / best, abs=2e-3)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        left = conn.execute("SELECT datname FROM pg_database WHERE datname LIKE %s",
                            (prefix + "%",)).fetchall()
    assert left == []
