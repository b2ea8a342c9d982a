"""Test helpers: waiting with a deadline, counting rows, a worker in a thread."""

from __future__ import annotations

import contextlib
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
from prometheus_client.parser import text_string_to_metric_families
from psycopg import sql

from jobqueue import JobQueue
from jobqueue.worker import Worker, WorkerConfig


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02,
               message: str = "condition") -> Any:
    """Poll ``predicate`` until it returns a truthy value, or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


def count(conn: psycopg.Connection[Any], schema: str, table: str, where: str = "true",
          params: Any = None) -> int:
    query = sql.SQL("SELECT count(*) FROM {} WHERE ").format(sql.Identifier(schema, table)) \
        + sql.SQL(where)  # type: ignore[operator]
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return int(row[0])


@contextlib.contextmanager
def worker_thread(app: JobQueue, **config: Any) -> Iterator[Worker]:
    """Run a worker in a background thread; stop it gracefully on exit."""
    config.setdefault("handle_signals", False)
    config.setdefault("poll_interval", 0.2)
    worker = app.worker(WorkerConfig(**config))
    errors: list[BaseException] = []

    def target() -> None:
        try:
            worker.run()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test thread
            errors.append(exc)

    thread = threading.Thread(target=target, name="test-worker", daemon=True)
    thread.start()
    try:
        wait_until(lambda: worker.ready or errors or not thread.is_alive(), 15,
                   message="worker to start")
        if errors:
            raise errors[0]
        yield worker
    finally:
        worker.request_stop()
        thread.join(60)
        assert not thread.is_alive(), "worker did not stop within 60s"
    if errors:
        raise errors[0]


def make_role(pg_dsn: str) -> Iterator[str]:
    """A fresh LOGIN role with no rights, for a fixture to ``yield from``; dropped after."""
    name = "jqt_role_" + uuid.uuid4().hex[:10]
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(name)))
    yield name
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        # Its sessions first (a worker's pool may linger for a moment), then its grants.
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                     "WHERE usename = %s", (name,))
        conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(name)))
        conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


#: A /metrics scrape: (name, labels) -> value.
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(port: int) -> Samples:
    """What a worker's metrics endpoint on 127.0.0.1:``port`` exports now."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))
