"""The FastAPI helper against a real FastAPI app, a real worker and real Postgres."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from psycopg import sql
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

from jobqueue import JobQueue
from jobqueue.contrib.fastapi import JobQueueFastAPI
from tests.helpers import count, worker_thread


@pytest.fixture
def service(pg_dsn: str, app: JobQueue, admin: psycopg.Connection[Any]) -> Iterator[
        tuple[TestClient, JobQueue]]:
    # The application's own table lives in the test's schema, dropped with it.
    admin.execute(sql.SQL("CREATE TABLE {}.orders (id serial PRIMARY KEY, item text)").format(
        sql.Identifier(app.schema)))
    orders = f'"{app.schema}".orders'

    @app.task
    def receipt(order_id: int) -> str:
        return f"receipt for order {order_id}"

    engine = create_async_engine(pg_dsn.replace("postgresql://", "postgresql+psycopg://", 1))
    jq = JobQueueFastAPI(app, engine)
    api = FastAPI(lifespan=jq.lifespan)

    @api.post("/orders")
    async def create(item: str, fail: bool = False,
                     session: AsyncSession = jq.transaction) -> dict[str, int]:
        order_id = (await session.execute(
            text(f"INSERT INTO {orders} (item) VALUES (:item) RETURNING id"),
            {"item": item})).scalar_one()
        job_id = await app.enqueue_async(receipt, {"order_id": order_id}, conn=session)
        if fail:
            raise RuntimeError("the endpoint fails after enqueueing")
        return {"order": order_id, "job": job_id}

    @api.get("/jobs/{job_id}/result")
    async def result(job_id: int, timeout: float = 10) -> dict[str, Any]:
        return {"result": await jq.result(job_id, timeout=timeout)}

    with TestClient(api, raise_server_exceptions=False) as client:
        yield client, app


def test_the_endpoint_writes_and_enqueues_in_one_transaction_committed_before_responding(
        service: tuple[TestClient, JobQueue], admin: psycopg.Connection[Any]) -> None:
    client, app = service
    made = client.post("/orders", params={"item": "book"})
    assert made.status_code == 200
    # Committed before the response went out: both rows are visible to anyone now.
    assert count(admin, app.schema, "orders") == 1
    assert app.job(made.json()["job"]).state == "queued"
    with worker_thread(app, concurrency=2):
        waited = client.get(f"/jobs/{made.json()['job']}/result")
    assert waited.status_code == 200
    assert waited.json() == {"result": f"receipt for order {made.json()['order']}"}


def test_an_endpoint_that_raises_leaves_neither_the_row_nor_the_job(
        service: tuple[TestClient, JobQueue], admin: psycopg.Connection[Any]) -> None:
    client, app = service
    failed = client.post("/orders", params={"item": "book", "fail": "true"})
    assert failed.status_code == 500
    assert count(admin, app.schema, "orders") == 0
    assert count(admin, app.schema, "jobs") == 0


def test_awaiting_a_result_maps_timeouts_and_unknown_jobs_to_http_errors(
        service: tuple[TestClient, JobQueue]) -> None:
    client, _app = service
    job_id = client.post("/orders", params={"item": "pen"}).json()["job"]
    slow = client.get(f"/jobs/{job_id}/result", params={"timeout": 0.3})  # no worker runs
    assert slow.status_code == 504
    assert "did not finish" in slow.json()["detail"]
    assert client.get("/jobs/987654321/result").status_code == 404


def test_the_readme_example_runs_as_written(pg_dsn: str, migrated: str,
                                           admin: psycopg.Connection[Any],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.readme import example

    monkeypatch.setenv("JOBQUEUE_DSN", pg_dsn)
    monkeypatch.setenv("JOBQUEUE_SCHEMA", migrated)
    # The example's unqualified "orders" resolves through the search_path.
    monkeypatch.setenv("PGOPTIONS", f"-c search_path={migrated}")
    admin.execute(sql.SQL("CREATE TABLE {}.orders (id serial PRIMARY KEY, item text)").format(
        sql.Identifier(migrated)))
    namespace: dict[str, Any] = {"__name__": "readme_fastapi"}
    exec(compile(example("FastAPI"), "README.md#FastAPI", "exec"), namespace)
    queue: JobQueue = namespace["queue"]
    with TestClient(namespace["api"]) as client:
        made = client.post("/orders", params={"item": "lamp"}).json()
        with worker_thread(queue, concurrency=1):
            got = client.get(f"/jobs/{made['job']}")
    assert got.json() == {"receipt": f"receipt for order {made['order']}"}
    assert count(admin, migrated, "orders") == 1
