"""The heartbeat: keeps this worker's leases and its ``workers`` row fresh.

One statement extends the lease of every job the worker holds, so a handler
that runs for an hour keeps its job while a worker that died loses its jobs
once the lease runs out.
"""

from __future__ import annotations

import time
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
    # Told which held jobs are still ours after the lease was in doubt.
    on_recheck: Callable[[set[int]], object]
    beats: int = field(default=0, init=False)
    _warned: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        Service.__init__(self)

    async def run(self) -> None:
        await self.every(lambda: self.interval, self.beat, self.log, "heartbeat.failed")

    async def beat(self) -> None:
        state = self.state
        silent = time.monotonic() - state.last_beat
        doubt = state.lease_in_doubt()
        if doubt and not self._warned:
            self._warned = True
            self.log.warning("worker.lease_in_doubt", silent_for=round(silent, 3),
                             lease_timeout=state.lease_timeout,
                             note="no heartbeat for longer than the lease: not claiming or "
                                  "starting buffered jobs until the leases are checked")
        async with state.rows_lock:  # never at once with a flush (see WorkerState)
            beat = await self.store.run(in_transaction(fleet.heartbeat(
                self.registration, state.held_ids(), self.lease)))
        state.last_beat = time.monotonic()
        if beat.reregistered:
            self.log.warning("worker.reregistered", worker_id=self.registration.worker_id)
        if doubt or beat.reregistered:
            held = len(state.buffer)
            self.on_recheck(beat.extended)
            self.log.info("worker.leases_checked", buffered_kept=len(state.buffer),
                          buffered_lost=held - len(state.buffer),
                          running_lost=sum(1 for job_id in state.inflight
                                           if job_id not in beat.extended))
            self._warned = False
        self.beats += 1
        for job_id in beat.cancel_requested:
            self.on_cancel_requested(job_id)
