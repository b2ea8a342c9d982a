"""The cost of jobqueue.tracing per job: ``python -m benchmarks otel``.

What tracing adds to a job: at enqueue the propagator's inject of the caller's
span (made here inside a request span, the case that stores something), and
per attempt the ``process`` span with the extract of the stored context and
the outcome's marks. Both are timed here in-process, with the SDK's
TracerProvider and a BatchSpanProcessor over an exporter that drops
everything (the issue's "no-op exporter"), against the same loop without
tracing in the same run; and, as the floor no instrumentation can go under,
the SDK's own cost of one bare span, also in the same run. No database is
involved: the spans cost the same whatever the insert or the handler cost,
and a drain of real jobs would bury a few microseconds in its run-to-run noise.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

#: The issue's target: at most this many microseconds of tracing per job.
TARGET_US = 10.0


def _noop_exporter() -> Any:
    from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

    class Dropping(SpanExporter):
        def export(self, spans: Sequence[Any]) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    return Dropping()


def measure(jobs: int = 20_000, rounds: int = 5) -> dict[str, Any]:
    """Best of ``rounds`` timings of ``jobs`` enqueue spans and attempt spans, µs per job."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    from jobqueue import tracing
    from jobqueue.outcome import Outcome
    from jobqueue.rows import ClaimedJob

    now = datetime.now(timezone.utc)

    def unconfigured() -> float:
        # The API installed, no provider set (yet): what every job pays then,
        # the enqueue's look at the current span and the attempt's test.
        started = time.perf_counter()
        for _ in range(jobs):
            tracing.current_context()
            if tracing.active():
                raise RuntimeError("a tracer provider is set already")
        return time.perf_counter() - started

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(_noop_exporter()))
    tracer = provider.get_tracer("benchmarks")
    with tracer.start_as_current_span("request"):
        stored = json.loads(tracing.current_context() or "{}")
    job = ClaimedJob(id=1, queue="default", task="t", args={}, attempts=1, max_attempts=5,
                     priority=0, run_at=now, created_at=now, trace_context=stored)
    outcome = Outcome.succeeded(job, 0.001)

    def loop_only() -> float:
        started = time.perf_counter()
        for i in range(jobs):
            _ = (outcome, [i])
        return time.perf_counter() - started

    def enqueue_side() -> float:
        with tracer.start_as_current_span("request"):
            started = time.perf_counter()
            for _ in range(jobs):
                tracing.current_context()
            return time.perf_counter() - started

    def bare_span() -> float:
        started = time.perf_counter()
        for _ in range(jobs):
            with tracer.start_as_current_span("bare"):
                pass
        return time.perf_counter() - started

    def attempt_side() -> float:
        started = time.perf_counter()
        for _ in range(jobs):
            with tracing.processing(job) as span:
                tracing.finished(span, outcome)
        return time.perf_counter() - started

    def best(fn: Any) -> float:
        return min(fn() for _ in range(rounds)) / jobs * 1e6

    base = best(loop_only)
    api_only = best(unconfigured) - base
    trace.set_tracer_provider(provider)
    try:
        enqueue = best(enqueue_side) - base
        attempt = best(attempt_side) - base
        floor = best(bare_span) - base
    finally:
        provider.shutdown()
    total = enqueue + attempt
    return {"jobs": jobs, "rounds": rounds, "enqueue_us": round(enqueue, 2),
            "attempt_us": round(attempt, 2), "per_job_us": round(total, 2),
            "sdk_bare_span_us": round(floor, 2), "api_only_us": round(api_only, 2),
            "over_sdk_floor_us": round(total - floor, 2),
            "target_us": TARGET_US, "met": total <= TARGET_US}
