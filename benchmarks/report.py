"""Ratios, the issue's targets, and the tables (Markdown, so the README can take them as is).

For a throughput scenario the **floor** is the fastest raw SQL row of that
scenario (the least work Postgres must do), and the **best peer** the fastest
of pgqueuer, procrastinate and graphile-worker in the same run. Only ratios
within one run mean anything: on a shared 2-core machine absolute numbers
move by ±20 %.

The scaling scenario has a table of its own: each row next to the same
target's run at the smallest backlog, and next to the raw floor at the same
backlog (a floor across sizes would compare different tables). ``--plot``
draws it with matplotlib.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks.common import Result

THROUGHPUT = ("drain", "enqueue-tx", "enqueue-one", "bulk")
PEERS = ("pgqueuer", "procrastinate", "graphile")
# jobqueue's rows by the name they have in the tables.
JQ_DRAIN = {"async": "jobqueue (async handler)", "sync": "jobqueue (sync handler)"}
JQ_HISTORY_OFF = "jobqueue, history off (async handler)"
JQ_DEFAULTS = {"async": "jobqueue defaults (async handler)",
               "sync": "jobqueue defaults (sync handler)"}


def _best(results: list[Result], names: tuple[str, ...]) -> Result | None:
    rows = [r for r in results if r.target in names]
    return max(rows, key=lambda r: r.rate) if rows else None


def _ratio_of(r: Result, base: Result | None) -> float | None:
    return round(r.rate / base.rate, 3) if base is not None and base.rate else None


def _smallest(group: list[Result], r: Result) -> Result | None:
    """The same target's scaling run at the smallest backlog."""
    mine = [x for x in group if x.label == r.label]
    return min(mine, key=lambda x: x.extra["backlog"]) if mine else None


def _raw_at(group: list[Result], backlog: int) -> Result | None:
    return _best([x for x in group if x.extra["backlog"] == backlog], ("raw",))


def rows(results: list[Result]) -> list[dict[str, Any]]:
    """Each result as a JSON-able row, with its ratios to the floor and the best peer
    (scaling: to its own smallest backlog, and to raw at the same backlog)."""
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
                row["vs_floor"] = _ratio_of(r, floor)
                row["vs_best_peer"] = _ratio_of(r, peer)
            if scenario == "scaling":
                row["vs_smallest"] = _ratio_of(r, _smallest(group, r))
                row["vs_raw_same_size"] = (None if r.target == "raw" else
                                           _ratio_of(r, _raw_at(group, r.extra["backlog"])))
            out.append(row)
    return out


def _jq(results: list[Result], scenario: str, label: str = JQ_DRAIN["async"]) -> Result | None:
    """jobqueue's row of a scenario: in drain and latency the one named ``label``."""
    for r in results:
        if r.scenario == scenario and r.target == "jobqueue" and \
                (scenario not in ("drain", "latency", "soak") or r.label == label):
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
    for variant, label in JQ_DEFAULTS.items():
        jq = _jq(results, "drain", label)
        if jq and (peer or floor):
            parts, met = [], []
            if peer:
                parts.append(f"{jq.rate / peer.rate:.2f}x best peer ({peer.label})")
                met.append(jq.rate >= 1.2 * peer.rate)
            if floor:
                parts.append(f"{jq.rate / floor.rate:.0%} of floor")
                met.append(jq.rate >= 0.8 * floor.rate)
            # Met only when both halves were measured and hold; one half failing
            # is enough for "no".
            verdict = all(met) if len(met) == 2 or not all(met) else None
            check(f"drain: jobqueue defaults ({variant} handler)",
                  ">= 1.2x best peer and >= 0.8x raw floor", ", ".join(parts), verdict)
    on, off = _jq(results, "drain"), _jq(results, "drain", JQ_HISTORY_OFF)
    if on and off:
        ratio = on.rate / off.rate
        check("drain: history on vs history off", ">= 85 %", f"{ratio:.0%}", ratio >= 0.85)
    plain = next((r for r in results if r.scenario == "chord"
                  and r.label == "jobqueue: plain jobs"), None)
    flow = next((r for r in results if r.scenario == "chord" and r.label != (
        plain.label if plain else "")), None)
    if plain and flow:
        ratio = flow.rate / plain.rate
        check("chord: members' drain vs plain jobs", ">= 80 %", f"{ratio:.0%}", ratio >= 0.8)
        enqueue = plain.extra["enqueue_seconds"] / flow.extra["enqueue_seconds"]
        check("chord: enqueue vs enqueue_many of plain jobs", ">= 80 %", f"{enqueue:.0%}",
              enqueue >= 0.8)
    jq = _jq(results, "result")
    if jq:
        check("result wake-up p50 (ack to app.result returning)", "<= 5 ms",
              f"{jq.extra['p50_ms']} ms", jq.extra["p50_ms"] <= 5)
    group = [r for r in results if r.scenario == "enqueue-tx"]
    jq = _jq(results, "enqueue-tx")
    insert = next((r for r in group if r.label == "raw: INSERT"), None)
    if jq and insert:
        ratio = jq.rate / insert.rate
        clients = jq.extra.get("clients", "?")
        check("enqueue-tx vs raw INSERT", f">= 90 % (enqueue(conn), {clients} clients)",
              f"{ratio:.0%}", ratio >= 0.9)
    group = [r for r in results if r.scenario == "enqueue-one"]
    jq = _jq(results, "enqueue-one")
    insert = next((r for r in group if r.label == "raw: autocommit INSERT"), None)
    if jq and insert:
        ratio = jq.rate / insert.rate
        check("enqueue-one: enqueue() without conn vs raw autocommit INSERT", ">= 0.8x",
              f"{ratio:.2f}x", ratio >= 0.8)
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
    _scaling_targets(results, check)
    return checks


def _scaling_targets(results: list[Result], check: Any) -> None:
    group = [r for r in results if r.scenario == "scaling"]
    for variant, label in JQ_DRAIN.items():
        mine = sorted((r for r in group if r.label == label), key=lambda r: r.extra["backlog"])
        if len(mine) >= 2:
            small, large = mine[0], mine[-1]
            ratio = large.rate / small.rate if small.rate else 0.0
            check(f"scaling: jobqueue ({variant} handler) at {large.extra['backlog']:,} vs "
                  f"at {small.extra['backlog']:,}", ">= 70 %", f"{ratio:.0%}", ratio >= 0.7)
        against = [(r, _raw_at(group, r.extra["backlog"])) for r in mine]
        ratios = [(r.rate / raw.rate, r.extra["backlog"]) for r, raw in against
                  if raw is not None and raw.rate]
        if ratios:
            worst, at = min(ratios)
            check(f"scaling: jobqueue ({variant} handler) vs raw at every size", ">= 0.7x",
                  f"lowest {worst:.2f}x (at {at:,}), over {len(ratios)} sizes", worst >= 0.7)


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
    chords = [r for r in data if r["scenario"] == "chord"]
    if chords:
        lines += ["| chord | jobs | enqueue s | drain jobs/s | settings |",
                  "|---|---:|---:|---:|---|"]
        lines += [f"| {r['label']} | {r['jobs']:,} | {r['enqueue_seconds']} | "
                  f"{_rate(r['jobs_per_second'])} | {r['settings']} |" for r in chords]
        lines.append("")
    waits = [r for r in data if r["scenario"] == "result"]
    if waits:
        lines += ["| result (ack → app.result returns) | jobs | p50 ms | p90 ms | max ms |",
                  "|---|---:|---:|---:|---:|"]
        lines += [f"| {r['label']} | {r['jobs']} | {r['p50_ms']} | {r['p90_ms']} | "
                  f"{r['max_ms']} |" for r in waits]
        lines.append("")
    scaling = [r for r in data if r["scenario"] == "scaling"]
    if scaling:
        lines += ["| scaling: target | backlog | jobs/s | vs smallest backlog | "
                  "vs raw (same backlog) |", "|---|---:|---:|---:|---:|"]
        order = list(dict.fromkeys(r["label"] for r in scaling))
        lines += [f"| {r['label']} | {r['backlog']:,} | {_rate(r['jobs_per_second'])} | "
                  f"{_ratio(r['vs_smallest'])} | {_ratio(r['vs_raw_same_size'])} |"
                  for r in sorted(scaling, key=lambda r: (order.index(r["label"]),
                                                          r["backlog"]))]
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


def plot_scaling(results: list[Result], path: Path, env: dict[str, Any]) -> None:
    """A PNG of the scaling rows: jobs/s against backlog size, one line per target."""
    import matplotlib

    matplotlib.use("Agg")  # no display: a file only
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    group = [r for r in results if r.scenario == "scaling"]
    fig, ax = plt.subplots(figsize=(9, 5.5), dpi=120)
    for label in dict.fromkeys(r.label for r in group):
        mine = sorted((r for r in group if r.label == label), key=lambda r: r.extra["backlog"])
        ax.plot([r.extra["backlog"] for r in mine], [r.rate for r in mine], marker="o",
                label=label)
    sizes = sorted({r.extra["backlog"] for r in group})
    ax.set_xscale("log")
    ax.set_xticks(sizes)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:,.0f}"))
    ax.xaxis.set_minor_formatter(FuncFormatter(lambda x, _: ""))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{y:,.0f}"))
    ax.set_ylim(bottom=0)
    ax.set_xlabel("backlog: jobs stored before the drain (log scale)")
    ax.set_ylabel("jobs/s (one worker process)")
    ax.set_title("Drain rate against backlog size\n"
                 f"PostgreSQL {env.get('postgres', '?')}, {env.get('cpus', '?')} CPUs, "
                 f"{env.get('started_at', '')}", fontsize=11)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
