"""OpenTelemetry traces across enqueue and run (``pip install 'jobqueue[otel]'``).

At enqueue, what the configured propagator writes for the caller's current
span (W3C traceparent by default) is stored with the job
(``jobs.trace_context``); no span is made for the enqueue itself, which is a
statement of the caller's (their database instrumentation sees it) and would
double the cost per job. Each attempt is a CONSUMER span ``process <queue>``
with the messaging attributes (system ``jobqueue``, operation type
``process``, destination = queue, message id = job id). The first attempt of a
plain job is a child of the producer's span; a retry, a replay and a workflow
node *link* to it instead, since their run is not what that request waited
for. A cron fire has no caller: the leader makes a span ``cron <schedule>`` of
the fire itself, which the attempts of its jobs link to.

jobqueue depends on the OpenTelemetry API only, imported here once: without
it :data:`ENABLED` is False, :func:`active` is False and :func:`current_context`
None (a flag test per job). With the API but no provider set (no SDK
configured) :func:`active` is False too: no span is made and nothing is stored.
"""

from __future__ import annotations

import json
from typing import Any

from jobqueue.outcome import Kind, Outcome
from jobqueue.rows import ClaimedJob

try:
    from opentelemetry import propagate, trace
    from opentelemetry.context import Context
    from opentelemetry.trace import Link, SpanKind, StatusCode
except ImportError:  # the extra is not installed: tracing is off
    ENABLED = False
else:
    ENABLED = True

SYSTEM = "jobqueue"


_cached: tuple[Any, Any] = (None, None)  # (provider, its tracer)


def _tracer() -> Any:
    # The SDK builds a new Tracer per get_tracer() (half the cost of a span), so
    # it is kept, but per provider: an app or a test may set the global provider
    # after jobqueue was imported.
    global _cached
    provider = trace.get_tracer_provider()
    if _cached[0] is not provider:
        _cached = (provider, provider.get_tracer("jobqueue"))
    return _cached[1]


def active() -> bool:
    """True once the application has set a tracer provider (an SDK): until then
    every span would be the API's non-recording one, not worth making per job."""
    return ENABLED and not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)


def current_context() -> str | None:
    """What to store with a job enqueued now: the propagator's fields for the
    current span (JSON), or None outside a valid span (no SDK, no request span)."""
    if not ENABLED or not trace.get_current_span().get_span_context().is_valid:
        return None
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return json.dumps(carrier) if carrier else None


#: A carrier field of jobqueue's own: the job's attempts link to the stored
#: span, never take it as parent (a cron fire's, which no attempt is part of).
LINK_ONLY = "jobqueue-link-only"


def cron_context(schedule: str, ticks: int) -> str:
    """The context to store with the jobs of one cron fire: a span of the fire
    itself (ended at once: it marks the moment), which their attempts link to."""
    span = _tracer().start_span(f"cron {schedule}", kind=SpanKind.PRODUCER, attributes={
        "messaging.system": SYSTEM, "messaging.operation.type": "send",
        "jobqueue.cron": schedule, "jobqueue.ticks": ticks})
    carrier = {LINK_ONLY: "1"}
    propagate.inject(carrier, context=trace.set_span_in_context(span))
    span.end()
    return json.dumps(carrier)


def _parent(job: ClaimedJob) -> tuple[Any, list[Any]]:
    """The context to start the attempt's span in, and its links."""
    root = Context()  # never the worker's own current context
    if not job.trace_context:
        return root, []
    producer = propagate.extract(job.trace_context)
    span_context = trace.get_current_span(producer).get_span_context()
    if not span_context.is_valid:
        return root, []
    if (job.attempts == 1 and job.replay_of is None and job.workflow_id is None
            and LINK_ONLY not in job.trace_context):
        return producer, []
    return root, [Link(span_context)]


def processing(job: ClaimedJob) -> Any:
    """The CONSUMER span of one attempt of ``job`` as a context manager: current
    while its handler runs, ended on exit; it yields the span."""
    context, links = _parent(job)
    attributes: dict[str, Any] = {
        "messaging.system": SYSTEM, "messaging.operation.type": "process",
        "messaging.destination.name": job.queue, "messaging.message.id": str(job.id),
        "jobqueue.task": job.task, "jobqueue.attempt": job.attempts}
    if job.workflow_id is not None:
        attributes["jobqueue.workflow_id"] = job.workflow_id
    span = _tracer().start_span(f"process {job.queue}", context=context,
                                kind=SpanKind.CONSUMER, links=links, attributes=attributes,
                                record_exception=False, set_status_on_exception=False)
    return trace.use_span(span, end_on_exit=True, record_exception=False,
                          set_status_on_exception=False)


def finished(span: Any, outcome: Outcome) -> Outcome:
    """Mark the attempt's span with an outcome other than success; returns ``outcome``.

    A success leaves the span as it is (status unset is OK, and an attribute
    more costs every job a microsecond of the SDK's attribute checks)."""
    if outcome.kind is Kind.SUCCEEDED:
        return outcome
    span.set_attribute("jobqueue.outcome", outcome.kind.value)
    error = outcome.error
    if outcome.kind in (Kind.RETRIED, Kind.DEAD) and error is not None:
        span.add_event("exception", {"exception.type": error.type,
                                     "exception.message": error.message})
        span.set_status(StatusCode.ERROR, f"{error.type}: {error.first_line}")
    return outcome
