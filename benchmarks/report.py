"""Ratios, the issue's targets, and the tables (Markdown, so the README can take them as is).

For a throughput scenario the **floor** is the fastest raw SQL row of that
scenario (the least work Postgres must do), and the **best peer** the fastest
of pgqueuer and procrastinate in the same run. Only ratios within one run
mean anything: on a shared 2-core machine absolute numbers move by ±20 %.
"""

from __future__ import annotations

from typing import Any

from benchmarks.common import Result

THROUGHPUT = ("drain", "enqueue-tx", "bulk")
PEERS = ("pgqueuer", "procrastinate")


def _best(results: list[Result], names: tuple[str, ...]) -> Result | None:
    rows = [r for r in results if r.target in names]
    return max(rows, key=lambda r: r.rate) if rows else None


def rows(results: list[Result]) -> list[dict[str, Any]]:
    """Each result as a JSON-able row, with its ratios to the floor and the best peer."""
    out = []
    for scenario in dict.fromkeys(r.scenario for r in results):
        group = [r for r in results if r.scenario == scenario]
        floor = _best(group, ("raw",))
        peer = _best(group, PEERS)
        for r in group:
            row: dict[str, Any] = {
                "scenario": r.scenario, "target": r.target, "label": r.label,
                "settings": r.settings, "jobs": r.jobs, "seconds": round(r.seconds, 3),
                "jobs_per_second": round(r.rate, 1), **r.extra}
            if scenario in THROUGHPUT:
                row["vs_floor"] = round(r.rate / floor.rate, 3) if floor and floor.rate else None
                row["vs_best_peer"] = round(r.rate / peer.rate, 3) if peer and peer.rate else None
            out.append(row)
    return out


def _jq(results: list[Result], scenario: str, variant: str = "async") -> Result | None:
    for r in results:
        if r.scenario == scenario and r.target == "jobqueue" and \
                (scenario in THROUGHPUT[1:] or variant in r.label):
            return r
    return None


def targets(results: list[Result]) -> list[dict[str, Any]]:
    """The issue's targets, each met or not, from this run's numbers (jobqueue's
    async-handler row where there are two)."""
    checks: list[dict[str, Any]] = []

    def check(name: str, goal: str, value: Any, met: bool | None) -> None:
        checks.append({"target": name, "goal": goal, "measured": value, "met": met})

    group = [r for r in results if r.scenario == "drain"]
    jq, floor, peer = _jq(results, "drain"), _best(group, ("raw",)), _best(group, PEERS)
    if jq and peer:
        ratio = jq.rate / peer.rate
        check("drain vs best peer", ">= 2.5x", f"{ratio:.2f}x ({peer.label})", ratio >= 2.5)
    if jq and floor:
        ratio = jq.rate / floor.rate
        check("drain vs raw floor", ">= 70 %", f"{ratio:.0%}", ratio >= 0.7)
    group = [r for r in results if r.scenario == "enqueue-tx"]
    jq = _jq(results, "enqueue-tx")
    insert = next((r for r in group if r.label == "raw: INSERT"), None)
    if jq and insert:
        ratio = jq.rate / insert.rate
        check("enqueue-tx vs raw INSERT", ">= 90 %", f"{ratio:.0%}", ratio >= 0.9)
    jq = _jq(results, "bulk")
    if jq:
        check("bulk", ">= 100,000 jobs/s", f"{jq.rate:,.0f} jobs/s", jq.rate >= 100_000)
    jq = _jq(results, "latency")
    if jq:
        check("latency p50", "<= 3 ms", f"{jq.extra['p50_ms']} ms", jq.extra["p50_ms"] <= 3)
        check("latency p99", "<= 15 ms", f"{jq.extra['p99_ms']} ms", jq.extra["p99_ms"] <= 15)
    jq = _jq(results, "soak")
    if jq:
        e = jq.extra
        lof = e["last_over_first"]
        check("soak last/first window", ">= 90 %", f"{lof:.0%}" if lof is not None else "n/a",
              None if lof is None else lof >= 0.9)
        rec = e["recovery_seconds"]
        check("soak recovery after the held transaction", "<= 60 s",
              "never" if rec is None else f"{rec:g} s",
              None if not e["hold_seconds"] else rec is not None and rec <= 60)
        check("soak worker RSS growth", "< 10 %", f"{e['rss_growth']:.1%}",
              e["rss_growth"] < 0.10)
    return checks


def _ratio(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}x"


def _rate(value: float) -> str:
    return f"{value:,.0f}"


def markdown(results: list[Result]) -> str:
    data = rows(results)
    lines: list[str] = []
    throughput = [r for r in data if r["scenario"] in THROUGHPUT]
    if throughput:
        lines += ["| scenario | target | jobs/s | vs floor | vs best peer | settings |",
                  "|---|---|---:|---:|---:|---|"]
        lines += [f"| {r['scenario']} | {r['label']} | {_rate(r['jobs_per_second'])} | "
                  f"{_ratio(r['vs_floor'])} | {_ratio(r['vs_best_peer'])} | {r['settings']} |"
                  for r in throughput]
        lines.append("")
    latency = [r for r in data if r["scenario"] == "latency"]
    if latency:
        lines += ["| latency (enqueue → start) | p50 ms | p90 ms | p99 ms | max ms | "
                  "enqueue+commit p50 ms |", "|---|---:|---:|---:|---:|---:|"]
        lines += [f"| {r['label']} | {r['p50_ms']} | {r['p90_ms']} | {r['p99_ms']} | "
                  f"{r['max_ms']} | {r['enqueue_commit_p50_ms']} |" for r in latency]
        lines.append("")
    soak = [r for r in data if r["scenario"] == "soak"]
    if soak:
        lines += ["| soak | offered jobs/s | first window | last window | last/first | "
                  "recovered after hold | max dead tuples | RSS growth |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for r in soak:
            lof = r["last_over_first"]
            rec = r["recovery_seconds"]
            lines.append(
                f"| {r['label']} | {_rate(r['rate_offered'])} | "
                f"{_rate(r['first_window_jobs_per_s'])} | {_rate(r['last_window_jobs_per_s'])} | "
                f"{'—' if lof is None else f'{lof:.0%}'} | "
                f"{'never' if rec is None else f'{rec:g} s'} | "
                f"{r['max_dead_tuples']:,} | {r['rss_growth']:.1%} |")
        lines.append("")
    checks = targets(results)
    if checks:
        lines += ["| target (jobqueue) | goal | measured | met |", "|---|---|---|---|"]
        lines += [f"| {c['target']} | {c['goal']} | {c['measured']} | "
                  f"{'yes' if c['met'] else ('—' if c['met'] is None else 'no')} |"
                  for c in checks]
        lines.append("")
    return "\n".join(lines)
