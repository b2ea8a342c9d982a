"""Enqueue: validate a job, then insert it on the caller's connection or our own.

Everything that can be wrong with a job because of its caller (args that are
not a JSON object, too large, an unknown task, a bad delay) is checked here in
Python *before* any SQL is sent: a failed statement would abort the caller's
transaction and take their business writes down with it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import re
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from datetime import datetime, timedelta
from typing import Any

import psycopg
import structlog
from psycopg import pq

from jobqueue import sql
from jobqueue.config import Settings
from jobqueue.errors import DatabaseError, DuplicateJobError, PayloadError, SchemaNotMigratedError
from jobqueue.log import get_logger

_NUL = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")
_SMALLINT = (-32768, 32767)
# One encoder for every call: json.dumps with any non-default option builds a
# new JSONEncoder each time, which was half the Python cost of a bulk enqueue.
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)


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
        # json only knows dict: any other Mapping (the type enqueue accepts) is copied.
        obj = args if isinstance(args, dict) else dict(args)
        text = _ENCODER.encode(obj)
    except (TypeError, ValueError) as exc:
        raise PayloadError(f"job args are not JSON-serializable: {exc}") from None
    if _NUL.search(text):
        # jsonb cannot store U+0000; the INSERT would fail inside the caller's transaction.
        raise PayloadError("job args contain a NUL character (\\u0000), which jsonb cannot store")
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:
        # A lone surrogate ("\ud800") is not valid UTF-8: psycopg could not send it.
        raise PayloadError("job args contain a lone surrogate, which is not valid UTF-8") from None
    if size > limit:
        raise PayloadError(f"job args are {size} bytes encoded, over the {limit}-byte limit")
    return text


def delay_seconds(delay: float | timedelta | None) -> float:
    if delay is None:
        return 0.0
    if isinstance(delay, timedelta):
        seconds = delay.total_seconds()
    elif isinstance(delay, (int, float)) and not isinstance(delay, bool):
        seconds = float(delay)
    else:
        raise PayloadError(f"delay must be seconds (a number) or a timedelta, got {delay!r}")
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


CORRELATION_LIMIT = 255

# The correlation id of the job running in this context (set by the worker for
# each job). A job enqueued from inside a handler inherits it, so one request
# can be followed through every job it leads to.
current_correlation_id: ContextVar[str | None] = ContextVar(
    "jobqueue_correlation_id", default=None)


def check_correlation_id(value: str | None) -> str | None:
    """The correlation id to store: the argument, else the running job's, else None."""
    if value is None:
        return current_correlation_id.get()
    if not isinstance(value, str):
        raise PayloadError(f"correlation_id must be a string, not {type(value).__name__}")
    if len(value) > CORRELATION_LIMIT:
        raise PayloadError(f"correlation_id is {len(value)} characters, over the "
                           f"{CORRELATION_LIMIT}-character limit")
    if "\x00" in value:
        # text cannot store NUL; the INSERT would fail inside the caller's transaction.
        raise PayloadError("correlation_id contains a NUL character")
    return value


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


# How often an enqueue with a unique_key tries again when the live job that
# blocked its INSERT finished before the lookup could return it.
UNIQUE_ATTEMPTS = 3


def check_lock_key(value: str | None) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise PayloadError(f"lock must be a non-empty string, not {value!r}")
    if "\x00" in value:
        raise PayloadError("lock contains a NUL character")
    return value


def _vanished() -> DatabaseError:
    return DatabaseError("the live job holding this unique_key kept finishing between "
                         "insert and lookup; enqueue again")


def insert_one(conn: psycopg.Connection[Any], settings: Settings, params: dict[str, Any],
               raise_on_duplicate: bool = False) -> int:
    for _ in range(UNIQUE_ATTEMPTS):
        row = conn.execute(sql.query("insert_job", settings.schema), params).fetchone()
        if row is not None:
            log_enqueued(params, [int(row[0])])
            return int(row[0])
        # ON CONFLICT on unique_key: the live job that holds the key. Read
        # committed gives this statement a newer snapshot than the INSERT's, so
        # that job may have finished in between: then the key is free, insert again.
        found = conn.execute(sql.query("find_unique_job", settings.schema),
                             {"unique_key": params["unique_key"]}).fetchone()
        if found is not None:
            if raise_on_duplicate:
                raise DuplicateJobError(params["unique_key"], int(found[0]))
            return int(found[0])
    raise _vanished()


# From this many jobs on, enqueue_many sends them with COPY. One INSERT ...
# unnest is a single round trip, COPY three (ids, COPY, its data), but the
# arrays unnest needs are built and parsed element by element on both sides,
# while COPY's rows are one text stream: per job it costs less than half.
COPY_THRESHOLD = 1000
COPY_CHUNK = 1000  # rows per write into the COPY stream


def use_copy(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any], n: int) -> bool:
    # COPY is not allowed in pipeline mode: the caller's pipeline gets the INSERT.
    return n >= COPY_THRESHOLD and conn.pgconn.pipeline_status == pq.PipelineStatus.OFF


def _copy_text(value: str) -> str:
    """A value in COPY's text format: backslash, tab, newline and CR escaped."""
    if "\\" in value or "\t" in value or "\n" in value or "\r" in value:
        value = (value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")
                 .replace("\r", "\\r"))
    return value


def copy_rows(ids: list[int], params: dict[str, Any], run_at: str) -> Iterator[str]:
    """The rows of copy_jobs, ``COPY_CHUNK`` at a time, in input order."""
    escaped: dict[str, str] = {}

    def text(value: str) -> str:
        out = escaped.get(value)
        if out is None:
            out = escaped[value] = _copy_text(value)
        return out

    # correlation_id and lock_key are the same for every job; \N is NULL.
    shared = "\t".join("\\N" if params[key] is None else _copy_text(params[key])
                       for key in ("correlation_id", "lock_key"))
    run_at = _copy_text(run_at)
    queues, tasks, args = params["queues"], params["tasks"], params["args"]
    priorities, attempts = params["priorities"], params["max_attempts"]
    for first in range(0, len(ids), COPY_CHUNK):
        yield "".join(
            f"{ids[i]}\t{text(queues[i])}\t{text(tasks[i])}\t{_copy_text(args[i])}\t"
            f"{priorities[i]}\t{run_at}\t{attempts[i]}\t{shared}\n"
            for i in range(first, min(len(ids), first + COPY_CHUNK)))


def _reserve_params(settings: Settings, params: dict[str, Any]) -> dict[str, Any]:
    return {"table": schema_table(settings), "n": len(params["tasks"]),
            "run_at": params["run_at"], "delay": params["delay"],
            "queues": sorted(set(params["queues"])), "channel": params["channel"]}


def copy_many(conn: psycopg.Connection[Any], settings: Settings,
              params: dict[str, Any]) -> list[int]:
    """enqueue_many by COPY: the ids drawn first, then the rows in one stream."""
    # On an autocommit connection the NOTIFY of the first statement would go
    # out before the rows exist: there, both run in a transaction of their own.
    with conn.transaction() if conn.autocommit else contextlib.nullcontext():
        row = conn.execute(sql.query("reserve_job_ids", settings.schema),
                           _reserve_params(settings, params)).fetchone()
        assert row is not None
        ids = [int(i) for i in row[0]]
        with conn.cursor() as cur, cur.copy(sql.query("copy_jobs", settings.schema)) as copy:
            for chunk in copy_rows(ids, params, row[1]):
                copy.write(chunk)
    log_enqueued(params, ids)
    return ids


def insert_many(conn: psycopg.Connection[Any], settings: Settings,
                params: dict[str, Any]) -> list[int]:
    if use_copy(conn, len(params["tasks"])):
        return copy_many(conn, settings, params)
    cur = conn.execute(sql.query("insert_jobs", settings.schema), params)
    ids = [int(r[0]) for r in cur.fetchall()]
    log_enqueued(params, ids)
    return ids


# -- the same on an async connection ------------------------------------------------------


async def probe_schema_async(conn: psycopg.AsyncConnection[Any], settings: Settings) -> None:
    cur = await conn.execute(sql.query("schema_probe", settings.schema),
                             {"table": schema_table(settings)})
    row = await cur.fetchone()
    if not row or not row[0]:
        raise not_migrated(settings)


async def insert_one_async(conn: psycopg.AsyncConnection[Any], settings: Settings,
                           params: dict[str, Any], raise_on_duplicate: bool = False) -> int:
    for _ in range(UNIQUE_ATTEMPTS):  # see insert_one
        cur = await conn.execute(sql.query("insert_job", settings.schema), params)
        row = await cur.fetchone()
        if row is not None:
            log_enqueued(params, [int(row[0])])
            return int(row[0])
        cur = await conn.execute(sql.query("find_unique_job", settings.schema),
                                 {"unique_key": params["unique_key"]})
        found = await cur.fetchone()
        if found is not None:
            if raise_on_duplicate:
                raise DuplicateJobError(params["unique_key"], int(found[0]))
            return int(found[0])
    raise _vanished()


async def copy_many_async(conn: psycopg.AsyncConnection[Any], settings: Settings,
                          params: dict[str, Any]) -> list[int]:
    """:func:`copy_many` on an async connection."""
    async with conn.transaction() if conn.autocommit else contextlib.nullcontext():
        cur = await conn.execute(sql.query("reserve_job_ids", settings.schema),
                                 _reserve_params(settings, params))
        row = await cur.fetchone()
        assert row is not None
        ids = [int(i) for i in row[0]]
        async with conn.cursor() as acur, \
                acur.copy(sql.query("copy_jobs", settings.schema)) as copy:
            for chunk in copy_rows(ids, params, row[1]):
                await copy.write(chunk)
    log_enqueued(params, ids)
    return ids


async def insert_many_async(conn: psycopg.AsyncConnection[Any], settings: Settings,
                            params: dict[str, Any]) -> list[int]:
    if use_copy(conn, len(params["tasks"])):
        return await copy_many_async(conn, settings, params)
    cur = await conn.execute(sql.query("insert_jobs", settings.schema), params)
    ids = [int(r[0]) for r in await cur.fetchall()]
    log_enqueued(params, ids)
    return ids


_enqueue_log: Any = None


def log_enqueued(params: dict[str, Any], ids: list[int]) -> None:
    """``job.enqueued`` at debug level, one event per job.

    Only once structlog is configured (by the host application or a jobqueue
    process): unconfigured structlog prints every level, and a library must not
    write a line per enqueue to an application's output. With debug disabled
    the filtering logger's ``debug`` is a no-op, so the hot path pays a lookup.
    """
    global _enqueue_log
    if _enqueue_log is None:
        if not structlog.is_configured():
            return
        _enqueue_log = get_logger("jobqueue.enqueue")
    enabled = getattr(_enqueue_log, "is_enabled_for", None)
    if enabled is not None and not enabled(logging.DEBUG):
        return  # skip building the events of a bulk enqueue nobody will see
    debug = _enqueue_log.debug
    single = "task" in params
    for i, job_id in enumerate(ids):
        debug("job.enqueued", job_id=job_id,
              task=params["task"] if single else params["tasks"][i],
              queue=params["queue"] if single else params["queues"][i],
              correlation_id=params.get("correlation_id"))


def pool_timeout(dsn: str, settings: Settings, exc: Exception) -> DatabaseError:
    """The pool only says it timed out; one direct attempt tells the person why."""
    try:
        psycopg.connect(dsn, connect_timeout=max(1, int(settings.connect_timeout))).close()
    except psycopg.OperationalError as direct:
        return db_error(direct)
    return DatabaseError(
        f"database unavailable: no pooled connection within {settings.connect_timeout:g}s"
        f" ({exc})")
