"""The heartbeat: keeps this worker's leases and its ``workers`` row fresh.

One statement extends the lease of every job the worker holds, so a handler
that runs for an hour keeps its job while a worker that died loses its jobs
once the lease runs out.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from jobqueue.db import fleet
from jobqueue.db.statement import in_transaction
from jobqueue.db.store import AsyncStore
from jobqueue.worker.service import Service
from jobqueue.worker.state import WorkerState


@dataclass(eq=False)
class Heartbeat(Service):
    name = "heartbeat"

    store: AsyncStore
    state: WorkerState
    registration: fleet.Registration
    log: Any
    interval: float
    lease: float
    # Told about jobs of ours flagged cancel_requested (NOTIFY may be missed).
    on_cancel_requested: Callable[[int], object]
    beats: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        Service.__init__(self)

    async def run(self) -> None:
        await self.every(lambda: self.interval, self.beat, self.log, "heartbeat.failed")

    async def beat(self) -> None:
        beat = await self.store.run(in_transaction(fleet.heartbeat(
            self.registration, self.state.held_ids(), self.lease)))
        if beat.reregistered:
            self.log.warning("worker.reregistered", worker_id=self.registration.worker_id)
        self.beats += 1
        for job_id in beat.cancel_requested:
            self.on_cancel_requested(job_id)
