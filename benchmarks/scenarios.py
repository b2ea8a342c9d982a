"""The scenarios. Each runs every target on a fresh store and checks its counts.

- **drain**: N no-op jobs stored beforehand; one worker process drains them.
  jobs/s = N / (first handler start -> worker returned, shutdown included).
- **scaling**: the drain, once per backlog size (10k to 1M by default), to see
  whether the rate holds as the table grows. Not part of ``all``: it is long.
- **enqueue-tx**: C concurrent connections, each committing one job per
  transaction, N jobs in all; no worker running. jobs/s = N / wall time.
- **enqueue-one**: one client, N jobs, each its own transaction with
  autocommit semantics (jobqueue: ``enqueue()`` without ``conn``, on its own
  pool). jobs/s = N / the time of the N enqueues.
- **bulk**: N jobs in batches of B, one transaction per batch, one connection.
- **latency**: an idle worker; one job every I seconds, each in its own
  transaction; enqueue -> handler start, per job (the clock is shared: the
  producer stamps time.time() before its transaction, the handler when called).
- **soak**: enqueue at a fixed rate (~80 % of the target's drain rate) and
  drain at once, for S seconds; a transaction holding the xmin horizon is held
  open for H seconds in the middle. Per window: jobs done, backlog, dead and
  live tuples of the jobs table, worker RSS.

A phase whose counts are off (a job lost, run twice, or left behind) raises
:class:`BenchmarkError`: its number would not mean anything.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from benchmarks.child import WorkerProcess
from benchmarks.common import BenchmarkError, Result, percentile, rss_bytes, table_stats
from benchmarks.targets import Target

Log = Callable[[str], None]


def stderr_log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _check_empty(target: Target, what: str) -> None:
    left = target.pending()
    if any(left.values()):
        raise BenchmarkError(f"{what}: left behind after the run: {left}")


def wait_for_server(dsn: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            psycopg.connect(dsn, connect_timeout=2).close()
            return True
        except psycopg.OperationalError:
            time.sleep(1)
    return False


def _phase(target: Target, scenario: str, log: Log, body: Callable[[], Result],
           label: str = "") -> Result:
    label = label or target.label(scenario)
    for attempt in (1, 2):
        log(f"[{scenario}] {label} ...")
        try:
            target.setup()
            try:
                result = body()
            finally:
                target.teardown()
            break
        except (psycopg.OperationalError, BenchmarkError) as exc:
            # A server restart (shared machines have them) ends every session:
            # the phase is void. Run it once more from a fresh store.
            lost = isinstance(exc, psycopg.OperationalError) or "Operational" in str(exc) \
                or "connection" in str(exc)
            if attempt == 2 or not lost or not wait_for_server(target.dsn, 120):
                raise
            log(f"[{scenario}] {label}: the connection was lost ({str(exc).strip()[:120]}); "
                "running the phase again")
            with contextlib.suppress(Exception):
                target.teardown()
    log(f"[{scenario}] {label}: {result.rate:,.0f} jobs/s ({result.jobs:,} jobs in "
        f"{result.seconds:.2f} s)")
    return result


def _result(target: Target, scenario: str, jobs: int, seconds: float, *, as_scenario: str = "",
            **extra: Any) -> Result:
    # as_scenario: the scenario whose label and settings the row takes (scaling's
    # rows are drains, named as in the drain table).
    named = as_scenario or scenario
    return Result(scenario=scenario, target=target.name, label=target.label(named),
                  settings=target.settings(named), jobs=jobs, seconds=seconds,
                  floor_candidate=target.name == "raw", extra=extra)


# -- drain ---------------------------------------------------------------------------------


def drain(target: Target, jobs: int, timeout: float, log: Log = stderr_log,
          scenario: str = "drain") -> Result:
    """One drain of ``jobs`` stored jobs; ``scenario`` names the row (``scaling``
    runs this same phase once per backlog size)."""
    def body() -> Result:
        out = target.drain_once(jobs, timeout)
        if out["handled"] != jobs:
            raise BenchmarkError(f"{scenario}: {jobs} jobs in, the handler ran "
                                 f"{out['handled']} times")
        _check_empty(target, scenario)
        first = out["first_start"] or out["started"]
        extra: dict[str, Any] = {"backlog": jobs} if scenario == "scaling" else {}
        return _result(target, scenario, jobs, out["ended"] - first, as_scenario="drain",
                       startup_seconds=round(first - out["started"], 3),
                       total_seconds=round(out["ended"] - out["started"], 3),
                       preload_seconds=round(out["preload_seconds"], 2), **extra)

    label = target.label("drain")
    if scenario != "drain":
        label = f"{label}, backlog {jobs:,}"
    return _phase(target, scenario, log, body, label=label)


# -- enqueue-tx, enqueue-one and bulk ------------------------------------------------------


def enqueue_tx(target: Target, jobs: int, clients: int, log: Log = stderr_log) -> Result:
    def body() -> Result:
        started = time.perf_counter()
        target.enqueue_tx(jobs, clients)
        elapsed = time.perf_counter() - started
        stored = target.stored()
        if stored != jobs:
            raise BenchmarkError(f"enqueue-tx: {jobs} jobs enqueued, {stored} stored")
        return _result(target, "enqueue-tx", jobs, elapsed, clients=clients)

    return _phase(target, "enqueue-tx", log, body)


def enqueue_one(target: Target, jobs: int, log: Log = stderr_log) -> Result:
    def body() -> Result:
        elapsed = target.enqueue_one(jobs)
        stored = target.stored()
        if stored != jobs:
            raise BenchmarkError(f"enqueue-one: {jobs} jobs enqueued, {stored} stored")
        return _result(target, "enqueue-one", jobs, elapsed, clients=1)

    return _phase(target, "enqueue-one", log, body)


def bulk(target: Target, jobs: int, batch: int, log: Log = stderr_log) -> Result:
    def body() -> Result:
        started = time.perf_counter()
        target.bulk(jobs, batch)
        elapsed = time.perf_counter() - started
        stored = target.stored()
        if stored != jobs:
            raise BenchmarkError(f"bulk: {jobs} jobs enqueued, {stored} stored")
        return _result(target, "bulk", jobs, elapsed, batch=batch)

    return _phase(target, "bulk", log, body)


# -- latency -------------------------------------------------------------------------------------

WARMUP = 5


def latency(target: Target, jobs: int, interval: float, timeout: float,
            log: Log = stderr_log) -> Result:
    def body() -> Result:
        worker = WorkerProcess(target.worker_module,
                               target.worker_spec("latency", "serve", record_starts=True)).start()
        try:
            # A few jobs first: the worker is up, connected and listening when
            # the measured jobs begin, and nothing is measured cold.
            target.latency_produce(0, WARMUP, interval)
            if not worker.wait_handled(WARMUP, timeout):
                raise BenchmarkError(f"latency: the worker ran {worker.handled} of "
                                     f"{WARMUP} warm-up jobs within {timeout:g}s")
            started = time.perf_counter()
            samples = target.latency_produce(WARMUP, jobs, interval)
            elapsed = time.perf_counter() - started
            if not worker.wait_handled(WARMUP + jobs, timeout):
                raise BenchmarkError(f"latency: the worker ran {worker.handled} of "
                                     f"{WARMUP + jobs} jobs within {timeout:g}s")
        finally:
            out = worker.stop()
        starts = out["starts"]
        missing = [s.seq for s in samples if s.seq not in starts]
        if missing or out["handled"] != WARMUP + jobs:
            raise BenchmarkError(f"latency: {len(missing)} jobs never started, "
                                 f"{out['handled']} handler calls for {WARMUP + jobs} jobs")
        _check_empty(target, "latency")
        ms = [(starts[s.seq] - s.enqueued) * 1000 for s in samples]
        commit_ms = [(s.committed - s.enqueued) * 1000 for s in samples]
        after_commit = [(starts[s.seq] - s.committed) * 1000 for s in samples]
        stats = {f"p{q}_ms": round(percentile(ms, q), 2) for q in (50, 90, 99)}
        stats["max_ms"] = round(max(ms), 2)
        stats["enqueue_commit_p50_ms"] = round(percentile(commit_ms, 50), 2)
        stats["commit_to_start_p50_ms"] = round(percentile(after_commit, 50), 2)
        stats["commit_to_start_p99_ms"] = round(percentile(after_commit, 99), 2)
        stats["interval_ms"] = interval * 1000
        return _result(target, "latency", jobs, elapsed, **stats)

    result = _phase(target, "latency", log, body)
    e = result.extra
    log(f"[latency] {result.label}: p50 {e['p50_ms']} ms, p90 {e['p90_ms']} ms, "
        f"p99 {e['p99_ms']} ms, max {e['max_ms']} ms")
    return result


# -- chord ---------------------------------------------------------------------------------------


def chord_drain(target: Target, jobs: int, timeout: float, log: Log = stderr_log) -> Result:
    """A drain of ``jobs`` stored as plain jobs or as one chord: how long the enqueue
    took, and the drain rate (every member, then the callback)."""
    def body() -> Result:
        out = target.drain_once(jobs, timeout)
        if out["handled"] != jobs:
            raise BenchmarkError(f"chord: {jobs} jobs in, the handler ran {out['handled']} times")
        _check_empty(target, "chord")
        first = out["first_start"] or out["started"]
        seconds = target.enqueue_seconds  # type: ignore[attr-defined]
        return _result(target, "chord", jobs, out["ended"] - first,
                       enqueue_seconds=round(seconds, 3),
                       enqueue_per_second=round(jobs / seconds, 1) if seconds else None)

    result = _phase(target, "chord", log, body)
    log(f"[chord] {result.label}: enqueue {result.extra['enqueue_seconds']} s, "
        f"drain {result.rate:,.0f} jobs/s")
    return result


# -- result wake-up ------------------------------------------------------------------------------


def result_wakeup(target: Target, jobs: int, seconds: float, timeout: float,
                  log: Log = stderr_log) -> Result:
    """``app.result()`` on one job at a time (each running ``seconds``, so that the
    waiter waits first): how soon after the ack it returns, woken by NOTIFY."""
    def body() -> Result:
        worker = WorkerProcess(target.worker_module, target.worker_spec("result", "serve")).start()
        try:
            started = time.perf_counter()
            stats = target.result_wakeups(jobs, seconds, timeout)  # type: ignore[attr-defined]
            elapsed = time.perf_counter() - started
        finally:
            worker.stop()
        _check_empty(target, "result")
        return _result(target, "result", jobs, elapsed, job_seconds=seconds, **stats)

    result = _phase(target, "result", log, body)
    e = result.extra
    log(f"[result] {result.label}: wake-up p50 {e['p50_ms']} ms, p90 {e['p90_ms']} ms, "
        f"max {e['max_ms']} ms")
    return result


# -- soak ----------------------------------------------------------------------------------------


@dataclass
class SoakPlan:
    seconds: float
    hold_seconds: float
    window: float
    rate: float
    tick: float = 0.1
    drain_grace: float = 30.0
    # Seconds between VACUUM (ANALYZE) of the jobs table run by the harness, a
    # stand-in for autovacuum on servers that have it off (0: none).
    vacuum_every: float = 0.0

    @property
    def hold_start(self) -> float:
        return max(0.0, (self.seconds - self.hold_seconds) / 2)

    @property
    def hold_end(self) -> float:
        return self.hold_start + self.hold_seconds


class Vacuumer:
    """VACUUM (ANALYZE) one table every ``every`` seconds in a thread of its own,
    the way autovacuum would with naptime = ``every`` and no cost delay."""

    def __init__(self, dsn: str, table: sql.Composable, every: float) -> None:
        self.dsn, self.table, self.every = dsn, table, every
        self.runs = 0
        self.seconds = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="soak-vacuum", daemon=True)

    def start(self) -> Vacuumer:
        if self.every > 0:
            self._thread.start()
        return self

    def _loop(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            while not self._stop.wait(self.every):
                started = time.monotonic()
                # With ANALYZE, as autovacuum would (jobqueue's migration sets an
                # analyze threshold of 5,000 rows): a VACUUM alone records the live
                # row count of a nearly empty moment, and the planner, scaling that
                # density to a table that has since grown, can flip the claim to a
                # sequential scan.
                conn.execute(sql.SQL("VACUUM (ANALYZE) {}").format(self.table))
                self.seconds += time.monotonic() - started
                self.runs += 1

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(120)


class HeldTransaction:
    """A REPEATABLE READ transaction with an xid: it pins the xmin horizon of its
    database, so vacuum cannot remove any row version deleted after it began."""

    def __init__(self, dsn: str, table: sql.Composable) -> None:
        self.conn = psycopg.connect(dsn)
        self.conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        self.conn.execute(sql.SQL("SELECT txid_current(), count(*) FROM {}").format(table))

    def release(self) -> None:
        self.conn.rollback()
        self.conn.close()


def capacity(target: Target, drain_rate: float, seconds: float = 12.0,
             log: Log = stderr_log) -> float:
    """What the target sustains with enqueue and drain running together: offer
    its drain rate (measured on a quiet table, no producer) for ``seconds`` and
    take the rate of the second half. A drain alone overstates it: under a soak
    the producer and the worker share the CPU and the table."""
    plan = SoakPlan(seconds=seconds, hold_seconds=0, window=seconds / 2, rate=drain_rate,
                    drain_grace=5.0)
    result = soak(target, plan, log=lambda message: None)
    sustained = float(result.extra["last_window_jobs_per_s"])
    log(f"[soak] {target.label('soak')}: drains {drain_rate:,.0f} jobs/s alone, "
        f"sustains {sustained:,.0f} jobs/s with enqueue running")
    return sustained


def soak(target: Target, plan: SoakPlan, log: Log = stderr_log) -> Result:
    windows: list[dict[str, Any]] = []

    def body() -> Result:
        dsn, schema, table = target.jobs_table()
        worker = WorkerProcess(target.worker_module, target.worker_spec("soak", "serve")).start()
        # The first window measures a worker that is running, not one starting.
        target.latency_produce(-WARMUP, WARMUP, 0.01)
        if not worker.wait_handled(WARMUP, 60):
            worker.stop()
            raise BenchmarkError(f"soak: the worker ran {worker.handled} of {WARMUP} "
                                 "warm-up jobs within 60s")
        n_windows = max(1, int(plan.seconds // plan.window))
        vacuumer = Vacuumer(dsn, sql.Identifier(schema, table), plan.vacuum_every).start()
        stop = threading.Event()
        errors: list[BaseException] = []
        t0 = time.monotonic()
        hold_marks: dict[str, float] = {}

        def sample(index: int, start: float, end: float, done_before: int) -> int:
            done = worker.handled - WARMUP
            stats = table_stats(dsn, schema, table)
            windows.append({
                "window": index, "start_s": round(start, 1), "end_s": round(end, 1),
                "jobs": done - done_before, "jobs_per_s": round((done - done_before) /
                                                                max(end - start, 1e-9), 1),
                "enqueued": target.enqueued, "backlog": target.enqueued - done,
                "dead_tuples": stats["dead"], "live_tuples": stats["live"],
                "table_bytes": stats["bytes"], "autovacuums": stats["autovacuums"],
                "rss_bytes": rss_bytes(worker.pid), "harness_vacuums": vacuumer.runs,
                "held": start < plan.hold_end and end > plan.hold_start,
            })
            w = windows[-1]
            log(f"[soak] {target.label('soak')}: window {index} ({w['start_s']:.0f}-"
                f"{w['end_s']:.0f} s) {w['jobs_per_s']:,.0f} jobs/s, backlog {w['backlog']:,}, "
                f"dead tuples {w['dead_tuples']:,}, RSS {w['rss_bytes'] / 2**20:.1f} MiB"
                f"{' [xmin held]' if w['held'] else ''}")
            return done

        def sampler() -> None:
            held: HeldTransaction | None = None
            index, done, window_start = 0, 0, 0.0
            try:
                while not stop.wait(0.05):
                    now = time.monotonic() - t0
                    if held is None and "start" not in hold_marks and \
                            plan.hold_seconds > 0 and now >= plan.hold_start:
                        held = HeldTransaction(dsn, sql.Identifier(schema, table))
                        hold_marks["start"] = now
                        log(f"[soak] holding a transaction open for {plan.hold_seconds:g} s")
                    if held is not None and now >= plan.hold_end:
                        held.release()
                        held = None
                        hold_marks["end"] = now
                        log("[soak] held transaction released")
                    if index < n_windows and now >= window_start + plan.window:
                        end = window_start + plan.window
                        done = sample(index, window_start, end, done)
                        index += 1
                        window_start = end
            except BaseException as exc:  # noqa: BLE001 - re-raised by the phase
                errors.append(exc)
            finally:
                if held is not None:
                    held.release()

        thread = threading.Thread(target=sampler, name="soak-sampler", daemon=True)
        thread.start()
        try:
            produced = target.soak_produce(plan.rate, n_windows * plan.window, plan.tick)
            # The last window closes with the producer; what is still queued is
            # drained after the measurement, only so that the counts can be checked.
            deadline = time.monotonic() + plan.window + 10
            while len(windows) < n_windows and not errors and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            stop.set()
            thread.join(30)
            vacuumer.stop()
        if errors:
            worker.stop()
            raise errors[0]
        # A backlog left at the end is a result, not an error (the target could
        # not keep up): give it a bounded grace to drain, then stop the worker and
        # check that every job is either done or still stored, none lost or twice.
        worker.wait_handled(produced + WARMUP, plan.drain_grace)
        out = worker.stop()
        left = target.pending()
        failed = sum(n for k, n in left.items() if "dead" in k or "failed" in k)
        unfinished = sum(left.values()) - failed
        if failed or out["handled"] + unfinished != produced + WARMUP:
            raise BenchmarkError(f"soak: {produced + WARMUP} jobs enqueued, {out['handled']} "
                                 f"ran, {left} left: some were lost or ran twice")
        summary = summarise_soak(windows, plan)
        summary["left_unfinished"] = unfinished
        summary["harness_vacuum_every"] = plan.vacuum_every
        summary["harness_vacuums"] = vacuumer.runs
        summary["harness_vacuum_seconds"] = round(vacuumer.seconds, 1)
        return _result(target, "soak", sum(w["jobs"] for w in windows),
                       sum(w["end_s"] - w["start_s"] for w in windows),
                       rate_offered=round(plan.rate, 1), soak_seconds=plan.seconds,
                       hold_seconds=plan.hold_seconds, hold=hold_marks, window=plan.window,
                       windows=windows, **summary)

    result = _phase(target, "soak", log, body)
    e = result.extra
    log(f"[soak] {result.label}: last/first window {e['last_over_first']}, recovered in "
        f"{e['recovery_seconds']} s, RSS growth {e['rss_growth']:.1%}")
    return result


def summarise_soak(windows: list[dict[str, Any]], plan: SoakPlan) -> dict[str, Any]:
    if not windows:
        return {"first_window_jobs_per_s": 0, "last_window_jobs_per_s": 0,
                "last_over_first": None, "recovery_seconds": None, "rss_growth": 0.0,
                "max_dead_tuples": 0}
    first, last = windows[0]["jobs_per_s"], windows[-1]["jobs_per_s"]
    # Recovery: the end of the first window that starts after the held
    # transaction ended and runs at >= 90 % of the first window, counted from
    # the release. None: never recovered within the run.
    recovery = None
    if plan.hold_seconds > 0:
        for w in windows:
            if w["start_s"] >= plan.hold_end - 1e-6 and w["jobs_per_s"] >= 0.9 * first:
                recovery = round(w["end_s"] - plan.hold_end, 1)
                break
    # RSS: from the end of the first window (imports and pools are warm) to the end.
    rss_first = windows[0]["rss_bytes"] or 1
    return {
        "first_window_jobs_per_s": first,
        "last_window_jobs_per_s": last,
        "last_over_first": round(last / first, 3) if first else None,
        "recovery_seconds": recovery,
        "rss_first_bytes": windows[0]["rss_bytes"],
        "rss_last_bytes": windows[-1]["rss_bytes"],
        "rss_growth": (windows[-1]["rss_bytes"] - rss_first) / rss_first,
        "max_dead_tuples": max(w["dead_tuples"] for w in windows),
        "max_backlog": max(w["backlog"] for w in windows),
    }
