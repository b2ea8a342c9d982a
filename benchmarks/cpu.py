"""CPU-bound handlers, threads against processes: ``python -m benchmarks cpu``.

The same jobs (by default 8, each a fixed amount of pure-Python work
calibrated to about 0.5 s on this machine) are drained twice by a burst
worker of this process, in the same run: once by a task on the default
thread pool, once by the same function declared ``executor="process"``. In
threads the interpreter lock lets one handler compute at a time, whatever the
number of cores; in processes they compute in parallel, one per core. The
issue's target: the process pool takes about half the thread pool's time on 2
cores (met here at a ratio of at most 0.65: forking the children and the
claims are in the timing too).
"""

from __future__ import annotations

import os
import time
from typing import Any

from benchmarks.common import drop_schema, fresh_schema

#: The ratio processes/threads the run must reach on 2 cores or more.
TARGET_RATIO = 0.65


def spin(rounds: int) -> int:
    """Pure-Python work: ``rounds`` of 10,000 multiply-modulo steps."""
    n = 0
    for _ in range(rounds):
        for i in range(10_000):
            n += i * i % 7
    return n


def calibrate(seconds: float) -> int:
    """How many rounds of :func:`spin` take about ``seconds`` here, alone."""
    rounds, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds / 4:
        spin(10)
        rounds += 10
    return max(1, int(rounds * 4))


def _drain(dsn: str, task: str, jobs: int, rounds: int, processes: int) -> float:
    from jobqueue import JobQueue
    from jobqueue.worker import WorkerConfig

    schema = fresh_schema(dsn)
    try:
        app = JobQueue(dsn, schema=schema, history=False)
        app.task(name="threaded", queue="cpu")(spin)
        app.task(name="forked", queue="cpu", executor="process")(spin)
        app.enqueue_many([(task, {"rounds": rounds})] * jobs)
        worker = app.worker(WorkerConfig(queues=("cpu",), concurrency=jobs, burst=True,
                                         processes=processes, handle_signals=False))
        started = time.perf_counter()
        worker.run()
        elapsed = time.perf_counter() - started
        if worker.stats.get("succeeded") != jobs:
            raise RuntimeError(f"{task}: {worker.stats} (expected {jobs} succeeded)")
        app.close()
        return elapsed
    finally:
        drop_schema(dsn, schema)


def measure(dsn: str, jobs: int = 8, seconds: float = 0.5, repeats: int = 2) -> dict[str, Any]:
    """Best of ``repeats`` drains each way, alternated, and their ratio."""
    cores = os.cpu_count() or 1
    rounds = calibrate(seconds)
    threads, processes = [], []
    for _ in range(repeats):
        threads.append(_drain(dsn, "threaded", jobs, rounds, cores))
        processes.append(_drain(dsn, "forked", jobs, rounds, cores))
    ratio = min(processes) / min(threads)
    return {"jobs": jobs, "job_seconds": seconds, "rounds": rounds, "cores": cores,
            "threads_s": round(min(threads), 3), "processes_s": round(min(processes), 3),
            "ratio": round(ratio, 3), "target_ratio": TARGET_RATIO,
            "met": cores < 2 or ratio <= TARGET_RATIO, "repeats": repeats}
