"""The benchmark suite's command line runs end to end and emits a JSON document that adds up.

Functional only: tiny scenarios against the test database, no assertion on
speed. ``python -m benchmarks all`` runs as a user would run it (a subprocess
from the repository root); every scenario must produce its rows, each row
must account for exactly the jobs it was given, and the ratios must be the
ratios of the reported rates. The peers are exercised when the ``bench``
extra is installed, Graphile Worker when node and npm are on PATH.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest

ROOT = Path(__file__).resolve().parents[2]
TINY = ["--drain-jobs", "300", "--tx-jobs", "40", "--clients", "4", "--one-jobs", "30",
        "--bulk-jobs", "500",
        "--bulk-batch", "200", "--latency-jobs", "10", "--latency-interval", "0.01",
        "--result-jobs", "5",
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
    assert list(rows) == ["drain", "enqueue-tx", "enqueue-one", "bulk", "latency", "result",
                          "soak"]
    labels = {s: [r["label"] for r in group] for s, group in rows.items()}
    assert labels["drain"] == ["raw: claim 100 + delete", "jobqueue (async handler)",
                               "jobqueue (sync handler)",
                               "jobqueue, history off (async handler)",
                               "jobqueue defaults (async handler)",
                               "jobqueue defaults (sync handler)"]
    assert labels["result"] == ["jobqueue: app.result()"]
    [waited] = rows["result"]
    assert waited["jobs"] == 5 and 0 < waited["p50_ms"] <= waited["p90_ms"] <= waited["max_ms"]
    assert labels["enqueue-tx"] == ["raw: INSERT", "raw: INSERT + NOTIFY", "jobqueue"]
    assert labels["enqueue-one"] == ["raw: autocommit INSERT", "raw: autocommit INSERT + NOTIFY",
                                     "jobqueue: enqueue() without conn"]
    assert labels["bulk"] == ["raw: INSERT unnest", "raw: COPY", "jobqueue"]
    assert labels["latency"] == ["raw: LISTEN + claim", "jobqueue (async handler)",
                                 "jobqueue (sync handler)"]
    assert labels["soak"] == ["raw: claim 100 + delete", "jobqueue (async handler)"]

    expected_jobs = {"drain": 300, "enqueue-tx": 40, "enqueue-one": 30, "bulk": 500,
                     "latency": 10}
    for scenario, jobs in expected_jobs.items():
        for row in rows[scenario]:
            assert row["jobs"] == jobs, row
            assert row["jobs_per_second"] > 0
    for scenario in ("drain", "enqueue-tx", "enqueue-one", "bulk"):
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
                           "enqueue-one: enqueue() without conn vs raw autocommit INSERT",
                           "drain: jobqueue defaults (async handler)",
                           "drain: jobqueue defaults (sync handler)",
                           "latency p50", "latency p99", "soak last/first window",
                           "drain: history on vs history off",
                           "result wake-up p50 (ack to app.result returning)",
                           "soak worker RSS growth"}
    # No peer in this run: half of the defaults' goal cannot be judged, and it says so
    # (unless the half it can judge already fails).
    defaults = checks["drain: jobqueue defaults (async handler)"]
    assert defaults["met"] in (None, False)
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


def test_scaling_drains_each_backlog_and_plots_it(pg_dsn: str, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    before = leftover_schemas(pg_dsn)
    png, written = tmp_path / "scaling.png", tmp_path / "scaling.json"
    document = run_suite(pg_dsn, "scaling", "--targets", "raw,jobqueue",
                         "--scaling-sizes", "600,200", "--timeout", "60",
                         "--plot", str(png), "--output", str(written))

    rows = by_scenario(document)
    assert list(rows) == ["scaling"]
    group = rows["scaling"]
    # Size by size (ascending, whatever order they were given in), every target at each.
    assert [(r["label"], r["backlog"]) for r in group] == [
        (label, size) for size in (200, 600)
        for label in ("raw: claim 100 + delete", "jobqueue (async handler)",
                      "jobqueue (sync handler)")]
    for row in group:
        assert row["jobs"] == row["backlog"]
        assert row["jobs_per_second"] > 0
        smallest = next(r for r in group if r["label"] == row["label"] and r["backlog"] == 200)
        assert row["vs_smallest"] == pytest.approx(
            row["jobs_per_second"] / smallest["jobs_per_second"], abs=2e-3)
        raw = next(r for r in group if r["target"] == "raw" and r["backlog"] == row["backlog"])
        if row["target"] == "raw":
            assert row["vs_raw_same_size"] is None
        else:
            assert row["vs_raw_same_size"] == pytest.approx(
                row["jobs_per_second"] / raw["jobs_per_second"], abs=2e-3)
    checks = {c["target"]: c for c in document["targets"]}
    for variant in ("async", "sync"):
        assert f"scaling: jobqueue ({variant} handler) at 600 vs at 200" in checks
        assert f"scaling: jobqueue ({variant} handler) vs raw at every size" in checks
    assert json.loads(written.read_text())["results"] == document["results"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert leftover_schemas(pg_dsn) == before


def test_graphile_worker_drains_as_a_peer(pg_dsn: str) -> None:
    if not (shutil.which("node") and shutil.which("npm")):
        pytest.skip("node and npm are not on PATH")
    prefix = "jqt_" + uuid.uuid4().hex[:10]
    # graphile-worker is installed on first use, into a cache folder outside the repo.
    document = run_suite(pg_dsn, "drain", "--targets", "raw,graphile", "--drain-jobs", "300",
                         "--peer-db-prefix", prefix, "--timeout", "60")
    if "graphile" in document["left_out"]:
        pytest.skip("graphile-worker could not be installed (no npm registry?)")
    group = by_scenario(document)["drain"]
    assert [r["target"] for r in group] == ["raw", "graphile"]
    graphile = group[-1]
    assert graphile["label"] == "graphile-worker 0.18.0"
    assert graphile["jobs"] == 300
    assert "concurrentJobs 24" in graphile["settings"]
    assert graphile["vs_best_peer"] == pytest.approx(1.0)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        left = conn.execute("SELECT datname FROM pg_database WHERE datname LIKE %s",
                            (prefix + "%",)).fetchall()
    assert left == []


def test_the_otel_benchmark_reports_per_job_costs_and_its_verdict() -> None:
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "otel", "--otel-jobs", "300",
                           "--json"], capture_output=True, text=True, timeout=120, check=False)
    found = json.loads(proc.stdout)
    assert set(found) >= {"enqueue_us", "attempt_us", "per_job_us", "sdk_bare_span_us",
                          "target_us", "met"}
    assert found["per_job_us"] == pytest.approx(found["enqueue_us"] + found["attempt_us"],
                                                abs=0.02)
    assert found["attempt_us"] > 0
    # Speed is not asserted here; the exit status is the verdict on the target.
    assert proc.returncode == (0 if found["met"] else 1), proc.stderr


def test_the_dashboard_benchmark_times_every_page(pg_dsn: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "dashboard", "--dsn", pg_dsn,
                           "--history-rows", "2000", "--dead-jobs", "200", "--json"],
                          capture_output=True, text=True, timeout=300, check=False)
    found = json.loads(proc.stdout)
    assert (found["history_rows"], found["dead_jobs"]) == (2000, 200)
    assert {"/", "/dead", "/history", "/doctor", "/api/overview"} <= set(found["pages"])
    assert all(t["median_ms"] <= t["max_ms"] for t in found["pages"].values())
    assert found["worst_ms"] == max(t["max_ms"] for t in found["pages"].values())
    # Speed is not asserted here; the exit status is the verdict on the target.
    assert proc.returncode == (0 if found["met"] else 1), proc.stderr


def test_the_cpu_benchmark_drains_both_ways_and_gives_the_ratio(pg_dsn: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "cpu", "--dsn", pg_dsn,
                           "--cpu-jobs", "2", "--cpu-seconds", "0.05", "--json"],
                          capture_output=True, text=True, timeout=300, check=False)
    found = json.loads(proc.stdout)
    assert found["jobs"] == 2 and found["rounds"] >= 1
    assert found["threads_s"] > 0 and found["processes_s"] > 0
    assert found["ratio"] == pytest.approx(found["processes_s"] / found["threads_s"], abs=0.01)
    # Speed is not asserted here; the exit status is the verdict on the target.
    assert proc.returncode == (0 if found["met"] else 1), proc.stderr


def test_the_backpressure_benchmark_times_the_check_at_each_backlog(pg_dsn: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "backpressure", "--dsn", pg_dsn,
                           "--backlogs", "100,2000", "--bp-jobs", "10", "--json"],
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    found = json.loads(proc.stdout)
    assert set(found["backlogs"]) == {"100", "2000"}
    for timing in found["backlogs"].values():
        assert timing["limited_us"] > 0 and timing["free_us"] > 0
        assert timing["check_us"] == pytest.approx(timing["limited_us"] - timing["free_us"],
                                                   abs=0.2)
