"""Enqueue: validate a job, then insert it on the caller's connection or our own.

Everything that can be wrong with a job because of its caller (args that are
not a JSON object, too large, an unknown task, a bad delay) is checked here in
Python *before* any SQL is sent: a failed statement would abort the caller's
transaction and take their business writes down with it.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

import psycopg

from jobqueue import sql
from jobqueue.config import Settings
from jobqueue.errors import DatabaseError, PayloadError, SchemaNotMigratedError

_NUL = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")
_SMALLINT = (-32768, 32767)


def encode_args(args: Mapping[str, Any] | None, limit: int) -> str:
    """Args as compact JSON text, or PayloadError if Postgres would refuse them."""
    if args is None:
        return "{}"
    if not isinstance(args, Mapping):
        raise PayloadError(f"job args must be a JSON object (a dict), not {type(args).__name__}")
    for key in args:
        if not isinstance(key, str):
            raise PayloadError(f"job args keys must be strings, got {key!r}")
    try:
        text = json.dumps(args, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise PayloadError(f"job args are not JSON-serializable: {exc}") from None
    if _NUL.search(text):
        # jsonb cannot store U+0000; the INSERT would fail inside the caller's transaction.
        raise PayloadError("job args contain a NUL character (\\u0000), which jsonb cannot store")
    size = len(text.encode("utf-8"))
    if size > limit:
        raise PayloadError(f"job args are {size} bytes encoded, over the {limit}-byte limit")
    return text


def delay_seconds(delay: float | timedelta | None) -> float:
    if delay is None:
        return 0.0
    seconds = delay.total_seconds() if isinstance(delay, timedelta) else float(delay)
    if not math.isfinite(seconds) or seconds < 0:
        raise PayloadError(f"delay must be a finite number of seconds >= 0, got {delay!r}")
    return seconds


def check_run_at(run_at: datetime | None) -> datetime | None:
    if run_at is not None and (run_at.tzinfo is None or run_at.utcoffset() is None):
        raise PayloadError("run_at must be timezone-aware (for example datetime.now(UTC))")
    return run_at


def check_priority(priority: int) -> int:
    if not _SMALLINT[0] <= priority <= _SMALLINT[1]:
        raise PayloadError(f"priority must be within {_SMALLINT}, got {priority}")
    return priority


def check_max_attempts(max_attempts: int) -> int:
    if max_attempts < 1:
        raise PayloadError(f"max_attempts must be >= 1, got {max_attempts}")
    return max_attempts


def schema_table(settings: Settings) -> str:
    return psycopg.sql.Identifier(settings.schema, "jobs").as_string(None)


def not_migrated(settings: Settings) -> SchemaNotMigratedError:
    flag = f" --schema {settings.schema}" if settings.schema != "jobqueue" else ""
    return SchemaNotMigratedError(
        f"schema {settings.schema!r} is not migrated: run `jobqueue migrate{flag}`")


def db_error(exc: psycopg.OperationalError) -> DatabaseError:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return DatabaseError(f"database unavailable: {first}")


# -- statements on a sync connection --------------------------------------------------


def probe_schema(conn: psycopg.Connection[Any], settings: Settings) -> None:
    row = conn.execute(sql.query("schema_probe", settings.schema),
                       {"table": schema_table(settings)}).fetchone()
    if not row or not row[0]:
        raise not_migrated(settings)


def insert_one(conn: psycopg.Connection[Any], settings: Settings, params: dict[str, Any]) -> int:
    cur = conn.execute(sql.query("insert_job", settings.schema), params)
    row = cur.fetchone()
    if row is None:  # ON CONFLICT on unique_key: return the live job that holds the key
        cur = conn.execute(sql.query("find_unique_job", settings.schema),
                           {"unique_key": params["unique_key"]})
        row = cur.fetchone()
        if row is None:
            raise DatabaseError("unique job vanished between insert and lookup; enqueue again")
    return int(row[0])


def insert_many(conn: psycopg.Connection[Any], settings: Settings,
                params: dict[str, Any]) -> list[int]:
    cur = conn.execute(sql.query("insert_jobs", settings.schema), params)
    return [int(r[0]) for r in cur.fetchall()]


# -- the same on an async connection ------------------------------------------------------


async def probe_schema_async(conn: psycopg.AsyncConnection[Any], settings: Settings) -> None:
    cur = await conn.execute(sql.query("schema_probe", settings.schema),
                             {"table": schema_table(settings)})
    row = await cur.fetchone()
    if not row or not row[0]:
        raise not_migrated(settings)


async def insert_one_async(conn: psycopg.AsyncConnection[Any], settings: Settings,
                           params: dict[str, Any]) -> int:
    cur = await conn.execute(sql.query("insert_job", settings.schema), params)
    row = await cur.fetchone()
    if row is None:
        cur = await conn.execute(sql.query("find_unique_job", settings.schema),
                                 {"unique_key": params["unique_key"]})
        row = await cur.fetchone()
        if row is None:
            raise DatabaseError("unique job vanished between insert and lookup; enqueue again")
    return int(row[0])


async def insert_many_async(conn: psycopg.AsyncConnection[Any], settings: Settings,
                            params: dict[str, Any]) -> list[int]:
    cur = await conn.execute(sql.query("insert_jobs", settings.schema), params)
    return [int(r[0]) for r in await cur.fetchall()]


def pool_timeout(dsn: str, settings: Settings, exc: Exception) -> DatabaseError:
    """The pool only says it timed out; one direct attempt tells the person why."""
    try:
        psycopg.connect(dsn, connect_timeout=max(1, int(settings.connect_timeout))).close()
    except psycopg.OperationalError as direct:
        return db_error(direct)
    return DatabaseError(
        f"database unavailable: no pooled connection within {settings.connect_timeout:g}s"
        f" ({exc})")
