"""FastAPI (or any ASGI app with a lifespan): jobqueue's pools, a transaction, results.

The common shape of a FastAPI service on Postgres: an endpoint writes rows and
enqueues a job *in the same transaction*, and another endpoint waits a bounded
time for a job's result. :class:`JobQueueFastAPI` gives the three pieces::

    jq = JobQueueFastAPI(queue, engine)          # a JobQueue, an AsyncEngine
    api = FastAPI(lifespan=jq.lifespan)

    @api.post("/orders")
    async def create(session: AsyncSession = jq.transaction):
        session.add(Order(...))
        job_id = await queue.enqueue_async(send_receipt, {...}, conn=session)

- ``lifespan`` disposes of the engine and closes jobqueue's pools at shutdown, so
  a reload or a test client's exit leaves no connection behind.
- ``transaction`` is a dependency yielding an ``AsyncSession`` inside
  ``session.begin()``: committed when the endpoint returns, rolled back when it
  raises. It runs with FastAPI's ``scope="function"``, so the COMMIT happens
  *before* the response is sent: a client that got a job id back can always
  find the job (with the default request scope it could race the commit).
- ``result(job_id, timeout)`` awaits a job's outcome (woken by NOTIFY) and turns
  the outcomes an HTTP client cares about into HTTPException: 504 on timeout,
  404 for an unknown job, 409 for a dead one.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, HTTPException
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from jobqueue.app import JobQueue
from jobqueue.errors import JobFailed, JobNotFound


class JobQueueFastAPI:
    """jobqueue's lifespan, transaction dependency and result helper for one app."""

    def __init__(self, queue: JobQueue, engine: AsyncEngine) -> None:
        self.queue = queue
        self.engine = engine
        # expire_on_commit=False: an endpoint may read what it wrote after the commit
        # (to build its response) without a new round trip per attribute.
        self.sessions = async_sessionmaker(engine, expire_on_commit=False)
        self.transaction: Any = Depends(self._transaction, scope="function")

    @asynccontextmanager
    async def lifespan(self, _api: Any) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await self.queue.aclose()
            await self.engine.dispose()

    async def _transaction(self) -> AsyncIterator[AsyncSession]:
        async with self.sessions() as session, session.begin():
            yield session

    async def result(self, job_id: int, *, timeout: float) -> Any:
        """The job's result, or an HTTPException an endpoint can let through."""
        try:
            return await self.queue.result_async(job_id, timeout=timeout)
        except TimeoutError:
            raise HTTPException(504, f"job {job_id} did not finish in {timeout:g}s") from None
        except JobNotFound:
            raise HTTPException(404, f"no job {job_id}") from None
        except JobFailed as failed:
            raise HTTPException(409, str(failed)) from None
