"""Worker apps for the cron acceptance tests: per-second schedules whose jobs record their tick.

Run them as a user would: ``jobqueue worker --app tests.apps.cron_app:fleet``
(or ``:overlap``), with the DSN and schema from ``$JOBQUEUE_DSN`` and
``$JOBQUEUE_SCHEMA``.

Handlers take their normal args. What a test needs to know about a run, the
tick it was fired for, is on the job's own row: a cron job's ``run_at`` is its
tick and its ``unique_key`` is ``cron:<schedule>:<tick>``. So each run copies
that row's identity into ``<schema>.cron_runs`` (:data:`CRON_RUNS_DDL`) in one
statement, with the worker's pid and the database's clock. The table has no
unique constraint on purpose: a job that ran twice, or a tick fired twice,
shows up as two rows.
"""

from __future__ import annotations

import asyncio
import os

import psycopg
from psycopg import sql

from jobqueue import JobContext, JobQueue

CRON_RUNS_DDL = """
CREATE TABLE {}.cron_runs (
    job_id      bigint      NOT NULL,
    cron_name   text        NOT NULL,
    tick        timestamptz NOT NULL,
    unique_key  text        NOT NULL,
    phase       text        NOT NULL,
    pid         integer     NOT NULL,
    at          timestamptz NOT NULL DEFAULT clock_timestamp()
)
"""

# DSN and schema from the environment (or the CLI's overrides) for both.
fleet = JobQueue()
overlap = JobQueue()


async def record(app: JobQueue, ctx: JobContext, phase: str) -> None:
    # app.schema is read at call time: `jobqueue worker --schema` replaces it after import.
    statement = sql.SQL(
        "INSERT INTO {runs} (job_id, cron_name, tick, unique_key, phase, pid) "
        "SELECT id, cron_name, run_at, unique_key, %s, %s FROM {jobs} WHERE id = %s"
    ).format(runs=sql.Identifier(app.schema, "cron_runs"),
             jobs=sql.Identifier(app.schema, "jobs"))
    async with await psycopg.AsyncConnection.connect(app.dsn, autocommit=True) as conn:
        cur = await conn.execute(statement, (phase, os.getpid(), ctx.id))
        if cur.rowcount != 1:
            raise RuntimeError(f"job {ctx.id} is not in the jobs table while running")


@fleet.task(pass_context=True)
async def beat(ctx: JobContext) -> None:
    """A quick job: one ``done`` row."""
    await record(fleet, ctx, "done")


# Every second, fleet-wide. overlap="allow" so that each tick fires whatever
# the previous one is doing, and catch_up=3 so that a scheduler stalled for a
# tick or two (a loaded machine, a leader killed mid-round) catches up.
fleet.cron("every-second", "*/1 * * * * *", beat, overlap="allow", catch_up=3)


@overlap.task(pass_context=True)
async def slow(ctx: JobContext, seconds: float) -> None:
    """``started``, ``seconds`` of work, ``finished``."""
    await record(overlap, ctx, "started")
    await asyncio.sleep(seconds)
    await record(overlap, ctx, "finished")


# A 3-second job every second; overlap="skip" (the default) must keep it to one at a time.
overlap.cron("slow-every-second", "* * * * * *", slow, {"seconds": 3.0})
