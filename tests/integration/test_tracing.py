"""OpenTelemetry spans of enqueue and attempts, with the SDK's in-memory exporter.

The SDK's provider is global and set once per process, so its processor here
forwards spans only while a test of this module runs.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from jobqueue import JobQueue, chain
from jobqueue.dead import DeadFilter
from jobqueue.testing import Drained, drain
from tests.helpers import count, wait_until, worker_thread


class Switch(SpanProcessor):
    """Forwards ended spans to ``inner`` only while ``on``."""

    def __init__(self, inner: SpanProcessor) -> None:
        self.inner, self.on = inner, False

    def on_end(self, span: ReadableSpan) -> None:
        if self.on:
            self.inner.on_end(span)


EXPORTER = InMemorySpanExporter()
SWITCH = Switch(SimpleSpanProcessor(EXPORTER))


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        provider.add_span_processor(SWITCH)
        trace.set_tracer_provider(provider)
    EXPORTER.clear()
    SWITCH.on = True
    try:
        yield EXPORTER
    finally:
        SWITCH.on = False
        EXPORTER.clear()


def named(exporter: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return sorted((s for s in exporter.get_finished_spans() if s.name == name),
                  key=lambda s: s.start_time or 0)


def test_request_enqueue_run_retry_have_that_shape(app: JobQueue,
                                                   spans: InMemorySpanExporter) -> None:
    failures = {"left": 1}

    @app.task
    def charge(amount: int) -> int:
        with trace.get_tracer("handler").start_as_current_span("handler work"):
            if failures["left"]:
                failures["left"] -= 1
                raise RuntimeError("card declined")
        return amount

    with trace.get_tracer("web").start_as_current_span("POST /orders") as request:
        job_id = app.enqueue(charge, {"amount": 5})
    assert drain(app) == Drained(succeeded=1, retried=1)

    # No span of jobqueue's own for the enqueue: the request's context is stored.
    assert [s.name for s in spans.get_finished_spans()
            if s.name.startswith("send")] == []
    request_id = request.get_span_context().span_id
    first, retry = named(spans, "process default")
    for span, attempt in ((first, 1), (retry, 2)):
        assert span.kind is SpanKind.CONSUMER
        assert span.attributes is not None
        assert span.attributes["messaging.message.id"] == str(job_id)
        assert span.attributes["messaging.operation.type"] == "process"
        assert span.attributes["jobqueue.attempt"] == attempt
    # The first attempt is a child of the request's span, in its trace ...
    assert first.parent is not None and first.parent.span_id == request_id
    assert first.context.trace_id == request.get_span_context().trace_id
    assert first.status.status_code is StatusCode.ERROR
    assert [e.name for e in first.events] == ["exception"]
    assert first.attributes is not None and first.attributes["jobqueue.outcome"] == "retried"
    # ... the retry is a trace of its own, linked to the request's span.
    assert retry.parent is None
    assert [link.context.span_id for link in retry.links] == [request_id]
    assert retry.status.status_code is StatusCode.UNSET
    # The handler's own spans are children of their attempt's span.
    work = named(spans, "handler work")
    assert [w.parent.span_id for w in work if w.parent] == [first.context.span_id,
                                                           retry.context.span_id]


def test_workflow_nodes_and_replays_link_to_the_producer(
        app: JobQueue, spans: InMemorySpanExporter, conn: psycopg.Connection[Any]) -> None:
    @app.task
    def step(n: int) -> int:
        return n

    @app.task(max_attempts=1)
    def doomed() -> None:
        raise ValueError("no")

    tracer = trace.get_tracer("web")
    with tracer.start_as_current_span("POST /flows") as flows:
        app.enqueue_workflow(chain(app.sig(step, {"n": 1}), app.sig(step, {"n": 2})))
    with tracer.start_as_current_span("POST /doomed") as doomed_request:
        app.enqueue(doomed)
    app.enqueue(step, {"n": 3})  # outside any span: nothing to link, a root span
    assert drain(app) == Drained(succeeded=3, dead=1)
    assert len(app.dead.replay(DeadFilter(task="doomed")).replayed) == 1
    assert drain(app) == Drained(dead=1)

    process = named(spans, "process default")
    nodes = [s for s in process if s.attributes and "jobqueue.workflow_id" in s.attributes]
    assert len(nodes) == 2
    for node in nodes:
        assert node.parent is None
        assert [link.context.span_id for link in node.links] == [
            flows.get_span_context().span_id]
    original, replay = [s for s in process if s.attributes
                        and s.attributes["jobqueue.task"] == "doomed"]
    assert original.parent is not None
    assert original.parent.span_id == doomed_request.get_span_context().span_id
    assert original.status.status_code is StatusCode.ERROR
    assert replay.parent is None
    assert [link.context.span_id for link in replay.links] == [
        doomed_request.get_span_context().span_id]
    [lone] = [s for s in process if s.attributes and s.attributes["jobqueue.task"] == "step"
              and "jobqueue.workflow_id" not in s.attributes]
    assert lone.parent is None and list(lone.links) == []
    assert count(conn, app.schema, "dead_jobs") == 2


def test_an_async_handler_runs_in_its_attempts_span(app: JobQueue,
                                                    spans: InMemorySpanExporter) -> None:
    @app.task
    async def fetch() -> str:
        await asyncio.sleep(0)
        return format(trace.get_current_span().get_span_context().span_id, "x")

    job_id = app.enqueue(fetch)
    drain(app)
    [attempt] = named(spans, "process default")
    assert app.job(job_id).result == format(attempt.context.span_id, "x")


def test_without_an_sdk_nothing_is_stored(pg_dsn: str, migrated: str) -> None:
    # A fresh process with the API but no provider configured: non-recording spans.
    code = ("from jobqueue import JobQueue\n"
            "app = JobQueue()\n"
            "app.enqueue('anything', strict=False)\n"
            "import psycopg, os\n"
            "with psycopg.connect(os.environ['JOBQUEUE_DSN']) as c:\n"
            "    print(c.execute(f'SELECT count(*) FROM \"{app.schema}\".jobs "
            "WHERE trace_context IS NULL').fetchone()[0])\n")
    env = {**os.environ, "JOBQUEUE_DSN": pg_dsn, "JOBQUEUE_SCHEMA": migrated}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "1"


def test_the_readme_example_traces_an_attempt_under_its_request(
        pg_dsn: str, migrated: str) -> None:
    from tests.readme import example

    code = (example("OpenTelemetry") + "\nfrom jobqueue.testing import drain\n"
            "assert drain(queue).succeeded == 1\nprovider.shutdown()\n")
    env = {**os.environ, "JOBQUEUE_DSN": pg_dsn, "JOBQUEUE_SCHEMA": migrated}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    decoder, text, found = json.JSONDecoder(), done.stdout, {}
    at = 0
    while (at := text.find("{", at)) >= 0:
        span, at = decoder.raw_decode(text, at)
        found[span["name"]] = span
    request, attempt, work = (found[n] for n in ("POST /orders", "process default",
                                                 "call the carrier"))
    assert attempt["parent_id"] == request["context"]["span_id"]
    assert work["parent_id"] == attempt["context"]["span_id"]
    assert attempt["kind"] == "SpanKind.CONSUMER"


def test_a_cron_jobs_attempt_links_to_the_span_of_its_fire(
        app: JobQueue, spans: InMemorySpanExporter) -> None:
    @app.task
    def tick() -> None: ...

    app.cron("every-second", "* * * * * *", tick)
    with worker_thread(app, concurrency=1):
        wait_until(lambda: named(spans, "process default"), 20,
                   message="a cron job's attempt")
    fires = named(spans, "cron every-second")
    assert fires and fires[0].kind is SpanKind.PRODUCER
    attempt = named(spans, "process default")[0]
    assert attempt.parent is None
    [link] = attempt.links
    assert link.context.span_id in {f.context.span_id for f in fires}
