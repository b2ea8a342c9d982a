"""The scheduler: fires the app's cron schedules, one job per tick across the fleet.

Every worker whose app defines schedules runs this loop, and wakes for the
next due tick (or at least every ``max_sleep`` seconds). Each round first tries
a transaction-scoped advisory lock (its own key, not maintenance's); the worker
that gets it leads that round. A leader:

1. upserts its app's schedules into the ``cron`` table and retires rows its app
   no longer defines (so schedules and their last fire survive restarts), on
   its first lead and then every ``sync_interval`` seconds;
2. reads each schedule's cursor (``next_fire_at``: the next tick to fire);
3. for each schedule with due ticks, in one statement, moves the cursor with a
   compare-and-set and inserts the chosen ticks' jobs, each with
   ``unique_key = 'cron:<name>:<tick>'`` and ``cron_name``, then NOTIFYs.

The lock makes one leader per round; the compare-and-set makes a tick fire
once even if two schedulers ever lead at once (two fleets with different lock
keys, say): the cursor moves once. The clock is the database's
(``clock_timestamp()``), so workers with skewed clocks still agree on what is due.

Misfires: when several ticks are due (the fleet was down, or every scheduler
was stalled), at most ``catch_up`` of them fire, the most recent ones; the
cursor moves past all of them. A new schedule (or one whose expression or
timezone changed) starts at the first tick after the round that first sees it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from jobqueue import tracing
from jobqueue.cron import Schedule, tick_key
from jobqueue.db import cron as statements
from jobqueue.db.statement import Procedure, in_transaction
from jobqueue.db.store import AsyncStore
from jobqueue.errors import DatabaseError
from jobqueue.protocol import advisory_key, job_channel
from jobqueue.registry import Registry
from jobqueue.worker.service import Backoff, Service

# Wake this much after a tick is due, not exactly at it: a timer that fires a
# hair early would find nothing due and have to sleep again.
WAKE_LATE = 0.003


def scheduler_key(schema: str) -> int:
    """The advisory lock key of the cron leader (distinct from maintenance's leader_key)."""
    return advisory_key(schema, "cron")


@dataclass(frozen=True)
class Fired:
    """What one schedule's round did."""

    name: str
    dropped: bool  # more ticks were due than catch_up allows: the older ones did not fire
    job_ids: tuple[int, ...]
    ticks: tuple[datetime, ...]  # of the jobs inserted
    skipped: bool  # overlap='skip' and a run was still queued or running
    lost: bool  # the compare-and-set failed: another scheduler moved the cursor


@dataclass
class Round:
    """The outcome of one round: whether this worker led, and what it fired."""

    led: bool
    now: datetime
    fired: list[Fired]
    changes: list[tuple[str, str]]
    synced: bool = False  # the definitions were stored this round
    resync: bool = False  # a schedule was missing: store them again next round


class Scheduler(Service):
    name = "scheduler"
    intake = True

    def __init__(self, store: AsyncStore, registry: Registry, log: Any, *,
                 max_sleep: float = 1.0, sync_interval: float = 10.0) -> None:
        super().__init__()
        self.store = store
        self.registry = registry
        self.schema = store.schema
        self.log = log
        self.max_sleep = max_sleep
        self.sync_interval = sync_interval
        self._synced_at: float | None = None
        # A snapshot: schedules defined after the worker started are not picked up.
        self.schedules: dict[str, Schedule] = dict(registry.schedules)
        self.key = scheduler_key(self.schema)
        self.rounds_led = 0
        self.jobs_fired = 0
        self._warned_unknown: set[str] = set()

    async def run(self) -> None:
        backoff = Backoff()
        while not self.stopping:
            try:
                delay = await self.run_round()
                backoff.reset()
            except DatabaseError as exc:
                delay = backoff.next()
                self.log.warning("scheduler.failed", error=str(exc), retry_in=delay)
            await self.sleep(delay)

    async def run_round(self) -> float:
        """One round; the seconds to sleep until the next one is worth running."""
        result = await self.round()
        measured = time.monotonic()
        upcoming = min(s.cron.next_after(result.now) for s in self.schedules.values())
        wait = (upcoming - result.now).total_seconds() - (time.monotonic() - measured)
        return min(self.max_sleep, max(0.0, wait) + WAKE_LATE)

    # -- one round ----------------------------------------------------------------------

    async def round(self) -> Round:
        # Definitions change only with a deploy: upsert them on this scheduler's
        # first lead and then now and again, not every second (an upsert locks
        # each row even when nothing changed).
        sync = self._synced_at is None or time.monotonic() - self._synced_at >= self.sync_interval
        result = await self.store.run(in_transaction(self._round(sync)))
        if result.led and result.synced:
            self._synced_at = time.monotonic()  # committed
        elif result.led and result.resync:
            self._synced_at = None
        for change, name in result.changes:
            self.log.info(f"cron.{change}", schedule=name)
        for f in result.fired:
            self._report(f)
        return result

    def _round(self, sync: bool) -> Procedure[Round]:
        lead: statements.Lead = yield statements.lead(self.key)
        if not lead.leader:
            return Round(False, lead.now, [], [])
        self.rounds_led += 1
        changes: list[statements.Change] = (yield statements.sync(self._definitions())) \
            if sync else []
        found: list[statements.Cursor] = yield statements.cursors(list(self.schedules))
        state = {c.name: c for c in found}
        fired, resync = [], False
        for name, schedule in self.schedules.items():
            if name not in state:
                # Retired by a leader whose app lacks it (a rolling deploy):
                # store it again next round, starting afresh.
                resync = True
                continue
            outcome = yield from self.fire(schedule, lead.now, state[name].last_fire_at,
                                           state[name].next_fire_at)
            if outcome is not None:
                fired.append(outcome)
        return Round(True, lead.now, fired, [(c.change, c.name) for c in changes],
                     synced=sync and not resync, resync=resync)

    def _definitions(self) -> dict[str, list[Any]]:
        rows = [self._definition(s) for s in self.schedules.values()]
        return {key: [r[key] for r in rows] for key in (
            "names", "expressions", "tasks", "args", "queues", "timezones", "overlaps",
            "priorities", "catch_ups")}

    def _definition(self, s: Schedule) -> dict[str, Any]:
        queue, priority, _ = self._job_defaults(s)
        return {"names": s.name, "expressions": s.expression, "tasks": s.task,
                "args": s.args_json, "queues": queue, "timezones": s.timezone,
                "overlaps": s.overlap, "priorities": priority, "catch_ups": s.catch_up}

    def _job_defaults(self, s: Schedule) -> tuple[str, int, int]:
        """Queue, priority and max_attempts of the schedule's jobs, as enqueue would pick them."""
        if s.task not in self.registry.tasks and s.name not in self._warned_unknown:
            # Not an error: a worker of another app may run it. Without one,
            # the job is dead-lettered as unknown_task, visibly.
            self._warned_unknown.add(s.name)
            self.log.warning("cron.unknown_task", schedule=s.name, task=s.task)
        queue, priority, max_attempts = self.registry.job_defaults(s.task)
        return (s.queue or queue, s.priority if s.priority is not None else priority,
                max_attempts)

    def fire(self, schedule: Schedule, now: datetime, last: datetime | None,
             cursor: datetime | None) -> Procedure[Fired | None]:
        """Fire what is due of ``schedule`` at ``now``, given the cursor this leader read.

        ``last``/``cursor`` are the row's ``last_fire_at``/``next_fire_at``; the
        statement only acts if the row still holds them. None if nothing was due.
        """
        cron = schedule.cron
        if cursor is None:
            # New (or its expression changed): start from the first tick after now.
            ticks: list[datetime] = []
            new_last, dropped = last, False
        elif cursor > now:
            return None
        else:
            # One more than we may fire, to know whether older ticks are dropped.
            due = cron.recent(now, schedule.catch_up + 1, since=cursor)
            dropped = len(due) > schedule.catch_up
            ticks = due[-schedule.catch_up:]
            new_last = ticks[-1] if ticks else last
        queue, priority, max_attempts = self._job_defaults(schedule)
        params = {
            "name": schedule.name,
            "expected_last": last,
            "expected_next": cursor,
            "last_fire_at": new_last,
            "next_fire_at": cron.next_after(now),
            "queue": queue,
            "task": schedule.task,
            "args": schedule.args_json,
            "priority": priority,
            "max_attempts": max_attempts,
            # Its args are this app's: written for the task's version as declared here.
            "version": self.registry.version(schedule.task),
            "ticks": ticks,
            "keys": [tick_key(schedule.name, t) for t in ticks],
            "allow_overlap": schedule.overlap == "allow",
            "channel": job_channel(self.schema),
            "trace_context": (tracing.cron_context(schedule.name, len(ticks))
                              if ticks and tracing.active() else None),
        }
        result: statements.FireResult = yield statements.fire(params)
        return Fired(name=schedule.name, dropped=dropped, job_ids=tuple(result.ids),
                     ticks=tuple(result.ticks or ()),
                     skipped=result.advanced and bool(ticks) and result.busy
                     and schedule.overlap == "skip",
                     lost=not result.advanced)

    def _report(self, f: Fired) -> None:
        self.jobs_fired += len(f.job_ids)
        if f.lost:
            self.log.warning("cron.lost_race", schedule=f.name,
                             note="another scheduler moved this schedule's cursor first")
            return
        for job_id, tick in zip(f.job_ids, f.ticks, strict=True):
            self.log.info("cron.fired", schedule=f.name, job_id=job_id, tick=tick.isoformat())
        if f.skipped:
            self.log.info("cron.skipped", schedule=f.name, reason="overlap",
                          note="the previous run is still queued or running")
        if f.dropped:
            self.log.warning("cron.missed", schedule=f.name, fired=len(f.ticks),
                             note="more ticks were due than catch_up allows; older ones dropped")
