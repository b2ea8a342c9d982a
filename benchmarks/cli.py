"""``python -m benchmarks``: run scenarios, print the table (or JSON) with the ratios.

    python -m benchmarks all --dsn postgresql://postgres@127.0.0.1:5432/jq_bench
    python -m benchmarks drain --drain-jobs 20000 --json
    python -m benchmarks soak --soak-seconds 120 --soak-hold 40 --soak-window 10
    python -m benchmarks scaling --scaling-sizes 10000,100000 --plot scaling.png

Progress goes to stderr; the table (or with ``--json`` the JSON document) to
stdout, and with ``--output FILE`` the JSON is also written to FILE.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from benchmarks import report, scenarios
from benchmarks.common import BenchmarkError, Result, autovacuum_on, environment
from benchmarks.targets import Target
from benchmarks.targets.graphile import GraphileTarget
from benchmarks.targets.jq import JobQueueTarget
from benchmarks.targets.pgq import PgQueuerTarget
from benchmarks.targets.proc import ProcrastinateTarget
from benchmarks.targets.raw import RawTarget

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Benchmarks of jobqueue against the raw SQL floor and its peers.")

ALL_TARGETS = ("raw", "jobqueue", "pgqueuer", "procrastinate", "graphile")
# The scenarios of `all`; scaling is not one of them (at its default sizes it
# stores and drains 1.4M jobs per target).
SCENARIOS = ("drain", "enqueue-tx", "enqueue-one", "bulk", "latency", "result", "soak")
SCALING_TARGETS = ("raw", "jobqueue", "pgqueuer")
SCALING_SIZES = "10000,100000,300000,1000000"

DsnOpt = Annotated[str | None, typer.Option("--dsn", envvar="JOBQUEUE_DSN",
                                            help="PostgreSQL DSN (jobqueue's schemas go "
                                                 "here; peers get their own databases "
                                                 "on the same server)")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the JSON document, not tables")]
OutputOpt = Annotated[Path | None, typer.Option("--output", help="Also write the JSON here")]
TargetsOpt = Annotated[str, typer.Option("--targets",
                                         help="Comma-separated: raw,jobqueue,pgqueuer,"
                                              "procrastinate,graphile (peers not installed "
                                              "are left out; graphile, a Node.js peer, "
                                              "runs in drain and scaling only)")]
DrainJobs = Annotated[int, typer.Option("--drain-jobs", min=1, help="drain: jobs")]
TxJobs = Annotated[int, typer.Option("--tx-jobs", min=1, help="enqueue-tx: jobs in all")]
Clients = Annotated[int, typer.Option("--clients", min=1, help="enqueue-tx: connections")]
OneJobs = Annotated[int, typer.Option("--one-jobs", min=1,
                                      help="enqueue-one: jobs, one transaction each")]
ScalingSizes = Annotated[str, typer.Option("--scaling-sizes",
                                           help="scaling: backlog sizes, comma-separated")]
PlotOpt = Annotated[Path | None, typer.Option("--plot",
                                              help="scaling: write a PNG of jobs/s against "
                                                   "backlog size here (matplotlib)")]
BulkJobs = Annotated[int, typer.Option("--bulk-jobs", min=1, help="bulk: jobs")]
BulkBatch = Annotated[int, typer.Option("--bulk-batch", min=1, help="bulk: jobs per batch")]
LatencyJobs = Annotated[int, typer.Option("--latency-jobs", min=1, help="latency: jobs")]
LatencyInterval = Annotated[float, typer.Option("--latency-interval", min=0.001,
                                                help="latency: seconds between jobs")]
SoakSeconds = Annotated[float, typer.Option("--soak-seconds", min=1,
                                            help="soak: seconds of enqueue + drain")]
SoakHold = Annotated[float, typer.Option("--soak-hold", min=0,
                                         help="soak: seconds a transaction holds the xmin "
                                              "horizon, centred in the run (0: none)")]
SoakWindow = Annotated[float, typer.Option("--soak-window", min=0.5,
                                           help="soak: seconds per throughput window")]
SoakLoad = Annotated[float, typer.Option("--soak-load", min=0.01, max=2.0,
                                         help="soak: offered rate as a fraction of the "
                                              "target's drain rate in this run")]
SoakRate = Annotated[float | None, typer.Option("--soak-rate", min=1,
                                                help="soak: offered jobs/s for every "
                                                     "target (instead of --soak-load)")]
SoakVacuum = Annotated[float | None, typer.Option(
    "--soak-vacuum-every", min=0,
    help="soak: the harness runs VACUUM (ANALYZE) on the jobs table every N seconds, a "
         "stand-in for "
         "autovacuum (0: never; default: 10 when the server has autovacuum off, else 0)")]
JqConcurrency = Annotated[int, typer.Option("--jq-concurrency", min=1,
                                            help="jobqueue worker concurrency")]
JqBatch = Annotated[int, typer.Option("--jq-batch", min=1, help="jobqueue worker batch_size")]
ProcConcurrency = Annotated[int, typer.Option("--procrastinate-concurrency", min=1,
                                              help="procrastinate worker concurrency")]
PgqBatch = Annotated[int, typer.Option("--pgqueuer-batch", min=1,
                                       help="pgqueuer batch_size")]
PeerDb = Annotated[str, typer.Option("--peer-db-prefix",
                                     help="Peers get the databases PREFIX_pgqueuer, "
                                          "PREFIX_procrastinate and PREFIX_graphile (dropped "
                                          "and created again for every scenario)")]
ResultJobs = Annotated[int, typer.Option("--result-jobs", min=1,
                                         help="app.result() waits, one job at a time")]
JobSeconds = Annotated[float, typer.Option("--job-seconds", min=0.0,
                                           help="how long each awaited job runs")]
Timeout = Annotated[float, typer.Option("--timeout", min=1,
                                        help="seconds one worker phase may take")]


@dataclass
class Settings:
    dsn: str
    targets: tuple[str, ...]
    jq_concurrency: int = 200
    procrastinate_concurrency: int = 10
    pgqueuer_batch: int = 100
    timeout: float = 300.0
    peer_db_prefix: str = "jq_bench"
    jq_batch: int = 100


def _settings(dsn: str | None, targets: str, jq_concurrency: int, procrastinate_concurrency: int,
              pgqueuer_batch: int, timeout: float, peer_db_prefix: str = "jq_bench") -> Settings:
    if not dsn:
        raise typer.BadParameter("--dsn (or $JOBQUEUE_DSN) is required", param_hint="--dsn")
    names = tuple(t.strip() for t in targets.split(",") if t.strip())
    unknown = [t for t in names if t not in ALL_TARGETS]
    if unknown:
        raise typer.BadParameter(f"unknown target(s) {unknown}; choose from {ALL_TARGETS}",
                                 param_hint="--targets")
    return Settings(dsn, names, jq_concurrency, procrastinate_concurrency, pgqueuer_batch,
                    timeout, peer_db_prefix)


def _rows(s: Settings, scenario: str) -> list[Target]:
    """The targets of a scenario, in table order; raw has one row per variant."""
    raw = {"enqueue-tx": ("insert", "notify"), "enqueue-one": ("insert", "notify"),
           "bulk": ("unnest", "copy")}.get(scenario, ("",))
    jq = ("async", "sync") if scenario in ("drain", "latency", "scaling") else ("async",)
    out: list[Target] = []
    if "raw" in s.targets:
        out += [RawTarget(s.dsn, v) for v in raw]
    if "jobqueue" in s.targets:
        out += [JobQueueTarget(s.dsn, v, concurrency=s.jq_concurrency,
                                  batch_size=s.jq_batch) for v in jq]
        if scenario == "drain":
            # History's cost: the same worker with JobQueue(history=False).
            out.append(JobQueueTarget(s.dsn, "async", concurrency=s.jq_concurrency,
                                      batch_size=s.jq_batch, history=False))
            # And at its defaults, as `jobqueue worker` runs without tuning flags.
            out += [JobQueueTarget(s.dsn, v, defaults=True) for v in jq]
    if scenario == "enqueue-one":
        return out  # jobqueue's enqueue() without conn next to the floor only
    if "pgqueuer" in s.targets and PgQueuerTarget.available():
        out.append(PgQueuerTarget(s.dsn, batch_size=s.pgqueuer_batch,
                                  database_prefix=s.peer_db_prefix))
    if "procrastinate" in s.targets and ProcrastinateTarget.available():
        out.append(ProcrastinateTarget(s.dsn, concurrency=s.procrastinate_concurrency,
                                       database_prefix=s.peer_db_prefix))
    # Graphile Worker's Node process does the drain only.
    if scenario in ("drain", "scaling") and "graphile" in s.targets and \
            GraphileTarget.available():
        out.append(GraphileTarget(s.dsn, database_prefix=s.peer_db_prefix))
    return out


# The scenarios each peer takes part in (graphile's Node process does drains only).
_PYTHON_PEER = {*SCENARIOS, "scaling"} - {"enqueue-one"}
PEER_SCENARIOS = {"pgqueuer": _PYTHON_PEER, "procrastinate": _PYTHON_PEER,
                  "graphile": {"drain", "scaling"}}


def _skipped(s: Settings, used: tuple[str, ...]) -> dict[str, str]:
    """The peers asked for (and used by one of ``used``) that cannot run, each with
    what to do about it. Asking graphile may install it: only when a drain needs it."""
    wanted = [name for name in s.targets if PEER_SCENARIOS.get(name, set()) & set(used)]
    hint = "pip install -e '.[bench]'"
    out = {name: hint for name, cls in (("pgqueuer", PgQueuerTarget),
                                        ("procrastinate", ProcrastinateTarget))
           if name in wanted and not cls.available()}
    if "graphile" in wanted and not GraphileTarget.available():
        out["graphile"] = GraphileTarget.problem()
    return out


def _run(s: Settings, plan: list[Callable[[], list[Result]]], as_json: bool,
         output: Path | None, params: dict[str, Any], used: tuple[str, ...],
         plot: Path | None = None) -> None:
    scenarios.wait_for_server(s.dsn, 120)
    env = environment(s.dsn)
    skipped = _skipped(s, used)
    for name, why in skipped.items():
        scenarios.stderr_log(f"not installed, left out: {name} ({why})")
    started = time.monotonic()
    results: list[Result] = []
    try:
        for step in plan:
            results += step()
    except BenchmarkError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    env["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    env["wall_seconds"] = round(time.monotonic() - started, 1)
    document = {"environment": env, "parameters": params, "left_out": list(skipped),
                "results": report.rows(results), "targets": report.targets(results)}
    if output is not None:
        output.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    if plot is not None:
        report.plot_scaling(results, plot, env)
        scenarios.stderr_log(f"[scaling] plot written to {plot}")
    if as_json:
        typer.echo(json.dumps(document, indent=2))
        return
    typer.echo(f"PostgreSQL {env['postgres']} at {env['host']} "
               f"(synchronous_commit={env['synchronous_commit']}, "
               f"autovacuum={env['autovacuum']}), Python {env['python']}, "
               f"{env['cpus']} CPUs, load average {env['load_average_at_start'][0]} at the start")
    typer.echo("")
    typer.echo(report.markdown(results))


def _drain(s: Settings, jobs: int) -> Callable[[], list[Result]]:
    return lambda: [scenarios.drain(t, jobs, s.timeout) for t in _rows(s, "drain")]


def _enqueue_tx(s: Settings, jobs: int, clients: int) -> Callable[[], list[Result]]:
    return lambda: [scenarios.enqueue_tx(t, jobs, clients) for t in _rows(s, "enqueue-tx")]


def _enqueue_one(s: Settings, jobs: int) -> Callable[[], list[Result]]:
    return lambda: [scenarios.enqueue_one(t, jobs) for t in _rows(s, "enqueue-one")]


def _scaling(s: Settings, sizes: list[int]) -> Callable[[], list[Result]]:
    def step() -> list[Result]:
        out = []
        # Size by size, every target at one size before the next: the rows that
        # are compared with each other (jobqueue and raw at one size) run close
        # together in time, under the same load on a shared machine.
        for size in sizes:
            # A phase is bounded as the drain's, or by 1,000 jobs/s at this size.
            timeout = max(s.timeout, size / 1_000)
            out += [scenarios.drain(t, size, timeout, scenario="scaling")
                    for t in _rows(s, "scaling")]
        return out

    return step


def _sizes(text: str) -> list[int]:
    try:
        sizes = sorted({int(part.replace("_", "")) for part in text.split(",") if part.strip()})
    except ValueError:
        raise typer.BadParameter(f"not a list of integers: {text!r}",
                                 param_hint="--scaling-sizes") from None
    if not sizes or sizes[0] < 1:
        raise typer.BadParameter("sizes must be positive integers", param_hint="--scaling-sizes")
    return sizes


def _chord(s: Settings, jobs: int) -> Callable[[], list[Result]]:
    def step() -> list[Result]:
        if "jobqueue" not in s.targets:
            return []
        return [scenarios.chord_drain(JobQueueTarget(s.dsn, "async", concurrency=s.jq_concurrency,
                                                     batch_size=s.jq_batch, shape=shape),
                                      jobs, s.timeout) for shape in ("plain", "chord")]
    return step


def _result(s: Settings, jobs: int, seconds: float) -> Callable[[], list[Result]]:
    def step() -> list[Result]:
        if "jobqueue" not in s.targets:
            return []
        return [scenarios.result_wakeup(JobQueueTarget(s.dsn, "async"), jobs, seconds, 30.0)]
    return step


def _bulk(s: Settings, jobs: int, batch: int) -> Callable[[], list[Result]]:
    return lambda: [scenarios.bulk(t, jobs, batch) for t in _rows(s, "bulk")]


def _latency(s: Settings, jobs: int, interval: float) -> Callable[[], list[Result]]:
    return lambda: [scenarios.latency(t, jobs, interval, min(s.timeout, 60))
                    for t in _rows(s, "latency")]


def _soak(s: Settings, seconds: float, hold: float, window: float, load: float,
          rate: float | None, drained: Callable[[], list[Result]] | None,
          probe_jobs: int, vacuum_every: float | None) -> Callable[[], list[Result]]:
    def step() -> list[Result]:
        vacuum = vacuum_every
        if vacuum is None:
            vacuum = 0.0 if autovacuum_on(s.dsn) else 10.0
            if vacuum:
                scenarios.stderr_log("[soak] autovacuum is off on this server: the harness "
                                     f"runs VACUUM (ANALYZE) on each jobs table every "
                                     f"{vacuum:g} s instead")
        capacity: dict[str, float] = {}
        if rate is None:
            # The offered rate is a share of each target's own drain rate: from
            # this run's drain scenario, else from a short drain measured now.
            known = drained() if drained is not None else []
            for r in known:
                if r.label not in capacity:
                    capacity[r.label] = r.rate
        out = []
        for t in _rows(s, "soak"):
            offered = rate
            sustained = None
            if offered is None:
                label = t.label("drain")
                if label not in capacity:
                    capacity[label] = scenarios.drain(t, probe_jobs, s.timeout).rate
                sustained = scenarios.capacity(t, capacity[label],
                                               seconds=min(12.0, max(2.0, seconds / 5)))
                offered = sustained * load
            plan = scenarios.SoakPlan(seconds=seconds, hold_seconds=hold, window=window,
                                      rate=offered, vacuum_every=vacuum)
            result = scenarios.soak(t, plan)
            result.extra["capacity_mixed_jobs_per_s"] = sustained
            out.append(result)
        return out

    return step


@app.command("all")
def run_all(
    dsn: DsnOpt = None,
    as_json: JsonOpt = False,
    output: OutputOpt = None,
    targets: TargetsOpt = ",".join(ALL_TARGETS),
    drain_jobs: DrainJobs = 20_000,
    tx_jobs: TxJobs = 8_000,
    clients: Clients = 8,
    one_jobs: OneJobs = 5_000,
    bulk_jobs: BulkJobs = 100_000,
    bulk_batch: BulkBatch = 1_000,
    latency_jobs: LatencyJobs = 300,
    latency_interval: LatencyInterval = 0.02,
    result_jobs: ResultJobs = 200,
    soak_seconds: SoakSeconds = 600,
    soak_hold: SoakHold = 120,
    soak_window: SoakWindow = 30,
    soak_load: SoakLoad = 0.8,
    soak_rate: SoakRate = None,
    soak_vacuum_every: SoakVacuum = None,
    jq_concurrency: JqConcurrency = 200, jq_batch: JqBatch = 100,
    procrastinate_concurrency: ProcConcurrency = 10,
    pgqueuer_batch: PgqBatch = 100,
    timeout: Timeout = 300,
    peer_db_prefix: PeerDb = "jq_bench",
    scenario: Annotated[list[str] | None, typer.Option(
        "--scenario", help="Only these scenarios (repeatable); default: all seven "
                           "(scaling is a command of its own)")] = None,
) -> None:
    """Every scenario, each target on a fresh store, one table with the ratios."""
    s = _settings(dsn, targets, jq_concurrency, procrastinate_concurrency, pgqueuer_batch,
                  timeout, peer_db_prefix)
    s.jq_batch = jq_batch
    chosen = tuple(scenario) if scenario else SCENARIOS
    bad = [c for c in chosen if c not in SCENARIOS]
    if bad:
        raise typer.BadParameter(f"unknown scenario(s) {bad}; choose from {SCENARIOS}",
                                 param_hint="--scenario")
    drained: list[Result] = []

    def drain_step() -> list[Result]:
        drained.extend(_drain(s, drain_jobs)())
        return drained

    steps: dict[str, Callable[[], list[Result]]] = {
        "drain": drain_step,
        "enqueue-tx": _enqueue_tx(s, tx_jobs, clients),
        "enqueue-one": _enqueue_one(s, one_jobs),
        "bulk": _bulk(s, bulk_jobs, bulk_batch),
        "latency": _latency(s, latency_jobs, latency_interval),
        "result": _result(s, result_jobs, 0.05),
        "soak": _soak(s, soak_seconds, soak_hold, soak_window, soak_load, soak_rate,
                      lambda: drained, min(drain_jobs, 5_000), soak_vacuum_every),
    }
    params = {k: v for k, v in locals().items()
              if k not in ("s", "steps", "drained", "drain_step", "dsn", "output")}
    params["scenario"] = list(chosen)
    _run(s, [steps[c] for c in SCENARIOS if c in chosen], as_json, output, params, chosen)


@app.command("drain")
def run_drain(dsn: DsnOpt = None, as_json: JsonOpt = False, output: OutputOpt = None,
              targets: TargetsOpt = ",".join(ALL_TARGETS), drain_jobs: DrainJobs = 20_000,
              jq_concurrency: JqConcurrency = 200, jq_batch: JqBatch = 100,
              procrastinate_concurrency: ProcConcurrency = 10,
              pgqueuer_batch: PgqBatch = 100, timeout: Timeout = 300,
              peer_db_prefix: PeerDb = "jq_bench") -> None:
    """N no-op jobs stored beforehand; one worker process drains them."""
    s = _settings(dsn, targets, jq_concurrency, procrastinate_concurrency, pgqueuer_batch,
                  timeout, peer_db_prefix)
    s.jq_batch = jq_batch
    _run(s, [_drain(s, drain_jobs)], as_json, output, {"drain_jobs": drain_jobs}, ("drain",))


@app.command("enqueue-tx")
def run_enqueue_tx(dsn: DsnOpt = None, as_json: JsonOpt = False, output: OutputOpt = None,
                   targets: TargetsOpt = ",".join(ALL_TARGETS), tx_jobs: TxJobs = 8_000,
                   clients: Clients = 8, peer_db_prefix: PeerDb = "jq_bench") -> None:
    """C concurrent connections, each committing one job per transaction."""
    s = _settings(dsn, targets, 200, 10, 100, 300, peer_db_prefix)
    _run(s, [_enqueue_tx(s, tx_jobs, clients)], as_json, output,
         {"tx_jobs": tx_jobs, "clients": clients}, ("enqueue-tx",))


@app.command("enqueue-one")
def run_enqueue_one(dsn: DsnOpt = None, as_json: JsonOpt = False, output: OutputOpt = None,
                    targets: TargetsOpt = ",".join(ALL_TARGETS), one_jobs: OneJobs = 5_000,
                    peer_db_prefix: PeerDb = "jq_bench") -> None:
    """One client, each job its own transaction: enqueue() without conn vs autocommit INSERT."""
    s = _settings(dsn, targets, 200, 10, 100, 300, peer_db_prefix)
    _run(s, [_enqueue_one(s, one_jobs)], as_json, output, {"one_jobs": one_jobs},
         ("enqueue-one",))


@app.command("scaling")
def run_scaling(dsn: DsnOpt = None, as_json: JsonOpt = False, output: OutputOpt = None,
                targets: TargetsOpt = ",".join(SCALING_TARGETS),
                scaling_sizes: ScalingSizes = SCALING_SIZES, plot: PlotOpt = None,
                jq_concurrency: JqConcurrency = 200, jq_batch: JqBatch = 100,
                procrastinate_concurrency: ProcConcurrency = 10,
                pgqueuer_batch: PgqBatch = 100, timeout: Timeout = 300,
                peer_db_prefix: PeerDb = "jq_bench") -> None:
    """The drain at several backlog sizes (10k to 1M): does the rate hold as the table grows?"""
    s = _settings(dsn, targets, jq_concurrency, procrastinate_concurrency, pgqueuer_batch,
                  timeout, peer_db_prefix)
    s.jq_batch = jq_batch
    sizes = _sizes(scaling_sizes)
    if plot is not None and importlib.util.find_spec("matplotlib") is None:
        # Said before the run, not after an hour of it.
        raise typer.BadParameter("needs matplotlib (pip install -e '.[bench]')",
                                 param_hint="--plot")
    _run(s, [_scaling(s, sizes)], as_json, output,
         {"scaling_sizes": sizes, "jq_concurrency": jq_concurrency, "jq_batch": jq_batch,
          "pgqueuer_batch": pgqueuer_batch, "timeout": timeout}, ("scaling",), plot=plot)


@app.command("bulk")
def run_bulk(dsn: DsnOpt = None, as_json: JsonOpt = False, output: OutputOpt = None,
             targets: TargetsOpt = ",".join(ALL_TARGETS), bulk_jobs: BulkJobs = 100_000,
             bulk_batch: BulkBatch = 1_000, peer_db_prefix: PeerDb = "jq_bench") -> None:
    """Batches of jobs, one transaction per batch."""
    s = _settings(dsn, targets, 200, 10, 100, 300, peer_db_prefix)
    _run(s, [_bulk(s, bulk_jobs, bulk_batch)], as_json, output,
         {"bulk_jobs": bulk_jobs, "bulk_batch": bulk_batch}, ("bulk",))


@app.command("latency")
def run_latency(dsn: DsnOpt = None, as_json: JsonOpt = False, output: OutputOpt = None,
                targets: TargetsOpt = ",".join(ALL_TARGETS), latency_jobs: LatencyJobs = 300,
                latency_interval: LatencyInterval = 0.02, jq_concurrency: JqConcurrency = 200,
                jq_batch: JqBatch = 100,
                procrastinate_concurrency: ProcConcurrency = 10,
                pgqueuer_batch: PgqBatch = 100, peer_db_prefix: PeerDb = "jq_bench") -> None:
    """An idle worker; one job every 20 ms in its own transaction; enqueue -> start."""
    s = _settings(dsn, targets, jq_concurrency, procrastinate_concurrency, pgqueuer_batch, 300,
                  peer_db_prefix)
    s.jq_batch = jq_batch
    _run(s, [_latency(s, latency_jobs, latency_interval)], as_json, output,
         {"latency_jobs": latency_jobs, "latency_interval": latency_interval}, ("latency",))


@app.command("result")
def run_result(dsn: DsnOpt = None, as_json: JsonOpt = False, output: OutputOpt = None,
               result_jobs: ResultJobs = 200, job_seconds: JobSeconds = 0.05) -> None:
    """app.result(): from a job's ack to the waiter's return (jobqueue only)."""
    s = _settings(dsn, "jobqueue", 200, 10, 100, 300)
    _run(s, [_result(s, result_jobs, job_seconds)], as_json, output,
         {"result_jobs": result_jobs, "job_seconds": job_seconds}, ("result",))


@app.command("chord")
def run_chord(dsn: DsnOpt = None, as_json: JsonOpt = False, output: OutputOpt = None,
              chord_jobs: Annotated[int, typer.Option(
                  "--chord-jobs", min=2, help="jobs: a chord of N - 1 members and its callback")]
              = 10_000,
              jq_concurrency: JqConcurrency = 200, jq_batch: JqBatch = 100,
              timeout: Timeout = 300) -> None:
    """A 10,000-job chord against as many plain jobs: enqueue time and drain rate."""
    s = _settings(dsn, "jobqueue", jq_concurrency, 10, 100, timeout)
    s.jq_batch = jq_batch
    _run(s, [_chord(s, chord_jobs)], as_json, output, {"chord_jobs": chord_jobs}, ("chord",))


@app.command("soak")
def run_soak(dsn: DsnOpt = None, as_json: JsonOpt = False, output: OutputOpt = None,
             targets: TargetsOpt = ",".join(ALL_TARGETS), soak_seconds: SoakSeconds = 600,
             soak_hold: SoakHold = 120, soak_window: SoakWindow = 30,
             soak_load: SoakLoad = 0.8, soak_rate: SoakRate = None,
             soak_vacuum_every: SoakVacuum = None, drain_jobs: DrainJobs = 5_000,
             jq_concurrency: JqConcurrency = 200, jq_batch: JqBatch = 100,
             procrastinate_concurrency: ProcConcurrency = 10,
             pgqueuer_batch: PgqBatch = 100, timeout: Timeout = 300,
             peer_db_prefix: PeerDb = "jq_bench") -> None:
    """Enqueue + drain at ~80 % of capacity with the xmin horizon held in the middle."""
    s = _settings(dsn, targets, jq_concurrency, procrastinate_concurrency, pgqueuer_batch,
                  timeout, peer_db_prefix)
    s.jq_batch = jq_batch
    _run(s, [_soak(s, soak_seconds, soak_hold, soak_window, soak_load, soak_rate, None,
                   drain_jobs, soak_vacuum_every)], as_json, output,
         {"soak_seconds": soak_seconds, "soak_hold": soak_hold, "soak_window": soak_window,
          "soak_load": soak_load, "soak_rate": soak_rate, "capacity_drain_jobs": drain_jobs,
          "soak_vacuum_every": soak_vacuum_every}, ("soak",))


@app.command("dashboard")
def run_dashboard(dsn: DsnOpt = None, as_json: JsonOpt = False,
                  history_rows: Annotated[int, typer.Option("--history-rows", min=0)]
                  = 1_000_000,
                  dead_jobs: Annotated[int, typer.Option("--dead-jobs", min=1)] = 100_000,
                  ) -> None:
    """Every dashboard page's render time over 1M history rows and 100k dead jobs.

    Exits 1 when a page is over benchmarks.dashboard.TARGET_MS."""
    from benchmarks import dashboard

    found = dashboard.measure(_settings(dsn, "jobqueue", 200, 10, 100, 300).dsn,
                              history=history_rows, dead=dead_jobs)
    if as_json:
        print(json.dumps(found))
    else:
        print(f"{found['history_rows']:,} history rows, {found['dead_jobs']:,} dead jobs, "
              f"{found['queued_jobs']:,} queued (filled in {found['fill_seconds']} s); "
              f"median / max of {found['repeats']}:")
        for path, t in found["pages"].items():
            print(f"  {path:40s} {t['median_ms']:8.1f} ms  {t['max_ms']:8.1f} ms")
        print(f"worst {found['worst_ms']} ms (target ≤ {found['target_ms']:.0f} ms)")
    if not found["met"]:
        raise typer.Exit(1)


@app.command("otel")
def run_otel(as_json: JsonOpt = False,
             otel_jobs: Annotated[int, typer.Option("--otel-jobs", min=100,
                                                    help="spans timed per round")] = 20_000,
             ) -> None:
    """What OpenTelemetry tracing adds per job (stored context + process span), no-op exporter.

    Exits 1 when the per-job cost is over benchmarks.tracing.TARGET_US."""
    from benchmarks import tracing as otel

    found = otel.measure(otel_jobs)
    if as_json:
        print(json.dumps(found))
    else:
        print(f"tracing per job: {found['per_job_us']} µs (enqueue {found['enqueue_us']} µs + "
              f"attempt span {found['attempt_us']} µs; target ≤ {found['target_us']} µs; "
              f"the SDK's bare span alone: {found['sdk_bare_span_us']} µs; API without a "
              f"provider: {found['api_only_us']} µs; best of {found['rounds']} x "
              f"{found['jobs']:,})")
    if not found["met"]:
        raise typer.Exit(1)


@app.command("backpressure")
def run_backpressure(dsn: DsnOpt = None, as_json: JsonOpt = False,
                     backlogs: Annotated[str, typer.Option("--backlogs")] = "10000,1000000",
                     bp_jobs: Annotated[int, typer.Option("--bp-jobs", min=10)] = 300,
                     ) -> None:
    """What a queue's max_ready check adds to one enqueue, at each backlog (ready jobs)."""
    from benchmarks import backpressure

    found = backpressure.measure(_settings(dsn, "jobqueue", 200, 10, 100, 300).dsn,
                                 tuple(_sizes(backlogs)), jobs=bp_jobs)
    if as_json:
        print(json.dumps(found))
        return
    print(f"one enqueue per transaction, max_ready {found['max_ready']:,} (warn), median of "
          f"{found['rounds']} rounds of {found['jobs_per_round']}:")
    for backlog, t in found["backlogs"].items():
        print(f"  backlog {backlog:>9,}: limited queue {t['limited_us']} µs, unlimited "
              f"{t['free_us']} µs, the check {t['check_us']} µs")


@app.command("cpu")
def run_cpu(dsn: DsnOpt = None, as_json: JsonOpt = False,
            cpu_jobs: Annotated[int, typer.Option("--cpu-jobs", min=1)] = 8,
            cpu_seconds: Annotated[float, typer.Option("--cpu-seconds", min=0.01,
                                                       help="CPU time per job")] = 0.5,
            ) -> None:
    """CPU-bound jobs on the thread pool against executor="process", in the same run.

    Exits 1 when processes take more than benchmarks.cpu.TARGET_RATIO of the threads' time."""
    from benchmarks import cpu

    found = cpu.measure(_settings(dsn, "jobqueue", 200, 10, 100, 300).dsn, cpu_jobs,
                        cpu_seconds)
    if as_json:
        print(json.dumps(found))
    else:
        print(f"{found['jobs']} jobs of ~{found['job_seconds']:g} s CPU on {found['cores']} "
              f"cores: threads {found['threads_s']} s, processes {found['processes_s']} s, "
              f"ratio {found['ratio']} (target ≤ {found['target_ratio']}; best of "
              f"{found['repeats']})")
    if not found["met"]:
        raise typer.Exit(1)


def main(argv: list[str] | None = None) -> None:
    app(args=argv, prog_name="python -m benchmarks")


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
