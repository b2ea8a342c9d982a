"""Connections for transactional handlers (``@app.task(transactional=True)``).

Such a handler gets ``ctx.conn``, a connection in a transaction of its own,
and the worker runs the job's ack *in that transaction* before committing it:
the handler's writes and the job's move to history commit together or not
at all, which makes its database effects exactly-once. A crash before the
COMMIT rolls both back (the job runs again, its writes never happened); a
crash after it leaves both done.

The ack is fenced: it deletes the job only where this worker still holds its
lease *for this attempt*. A worker that lost the lease (it froze and was
rescued, an operator's cancel, another worker claimed the job) finds no row,
and the whole transaction rolls back, so a stale attempt never commits
business writes. Each job has its own transaction, so one failing job never
rolls back another of the same claimed batch.

The pools are separate from the worker's own (whose sessions run with
``synchronous_commit=off``, fine for the queue's bookkeeping but not for a
user's business writes), sized to the concurrency and opened on first use.
"""

from __future__ import annotations

from jobqueue.config import Settings
from jobqueue.db import jobs
from jobqueue.db.drivers import OrmSessions
from jobqueue.db.statement import Procedure
from jobqueue.db.store import AsyncStore, PoolOptions, Store
from jobqueue.outcome import Outcome


class Transactions:
    """The sync and async pools of transactional handlers, and their ack."""

    def __init__(self, settings: Settings, worker_id: str, size: int,
                 application_name: str) -> None:
        options = PoolOptions(name="jobqueue-transactional", min_size=0, max_size=max(1, size),
                              autocommit=False, application_name=application_name)
        # The worker checked the schema at start: no probe per pool.
        self.sync = Store(settings, options=options, probe=False)
        self.aio = AsyncStore(settings, options=options, probe=False)
        self.worker_id = worker_id
        self.schema = settings.schema
        self.orm = OrmSessions()  # ctx.session() / ctx.async_session()

    def ack(self, outcome: Outcome) -> Procedure[None]:
        """The fenced ack, run in the handler's transaction before its COMMIT."""
        return jobs.commit_success(outcome, self.worker_id, self.schema)

    async def aclose(self) -> None:
        await self.aio.aclose()
        self.sync.close()
