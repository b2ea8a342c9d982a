"""Maintenance: the fleet's housekeeping, done by one leader at a time.

Every worker runs this loop, and each round first tries a transaction-scoped
advisory lock; the one that gets it is the leader for that round. A
transaction-scoped lock (rather than a session lock held for life) releases
itself at COMMIT, so leadership survives connection loss without a stale
holder and works through PgBouncer's transaction mode.

The leader reaps workers that stopped heartbeating (or whose session Postgres
shows as gone) and rescues their jobs (see :func:`jobqueue.db.fleet.maintenance_round`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from jobqueue.db import fleet
from jobqueue.db.statement import in_transaction
from jobqueue.db.store import AsyncStore
from jobqueue.protocol import advisory_key, job_channel, outcome_channel
from jobqueue.worker.service import Service

#: Every this many rounds led, the leader prunes the outcome counters and keeps
#: history's partitions (see maintain_history).
PRUNE_EVERY = 60


def leader_key(schema: str) -> int:
    return advisory_key(schema, "leader")


@dataclass(eq=False)
class Maintenance(Service):
    name = "maintenance"

    store: AsyncStore
    log: Any
    interval: float
    worker_timeout: float
    session_grace: float
    rounds_led: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        Service.__init__(self)
        self.key = leader_key(self.store.schema)

    async def run(self) -> None:
        # Jitter keeps a fleet started at once from contending on every round.
        await self.every(lambda: self.interval * random.uniform(0.8, 1.2), self.round, self.log,
                         "maintenance.failed")

    async def round(self) -> bool:
        """One maintenance round; True if this worker was the leader."""
        rescue = await self.store.run(in_transaction(fleet.maintenance_round(
            self.key, self.worker_timeout, self.session_grace, job_channel(self.store.schema),
            outcome_channel(self.store.schema), prune=self.rounds_led % PRUNE_EVERY == 0)))
        if not rescue.led:
            return False
        self.rounds_led += 1
        if rescue.reaped or rescue.dead or rescue.requeued:
            self.log.warning("maintenance.rescued", workers=rescue.reaped,
                             requeued=len(rescue.requeued), dead=rescue.dead)
        if rescue.dropped:
            self.log.info("maintenance.history_pruned", partitions=rescue.dropped)
        return True
