"""Job payloads and options, checked before any SQL: pure functions, no I/O.

Each check raises :class:`~jobqueue.PayloadError` for what Postgres would
refuse (or store wrongly), so a bad job never reaches the database, where the
failed statement would abort the caller's transaction.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from contextvars import ContextVar
from datetime import datetime, timedelta
from typing import Any

from jobqueue.errors import PayloadError

_NUL = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")
_SMALLINT = (-32768, 32767)
# One encoder for every call: json.dumps with any non-default option builds a
# new JSONEncoder each time, which was half the Python cost of a bulk enqueue.
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)
CORRELATION_LIMIT = 255
# How deep job args may nest. Postgres' jsonb parser takes far deeper
# documents (10,000 levels on a default max_stack_depth), but Python's json
# encoder and the worker's decoder recurse once per level and hit the
# interpreter's recursion limit (1,000 frames, shared with the caller's stack)
# before that: 500 leaves room for a deep caller and is far beyond real payloads.
NESTING_LIMIT = 500

# The correlation id of the job running in this context (set by the worker for
# each job). A job enqueued from inside a handler inherits it, so one request
# can be followed through every job it leads to.
current_correlation_id: ContextVar[str | None] = ContextVar(
    "jobqueue_correlation_id", default=None)


def encode_args(args: Mapping[str, Any] | None, limit: int) -> str:
    """Args as compact JSON text, or PayloadError if Postgres would refuse them."""
    if args is None:
        return "{}"
    if not isinstance(args, Mapping):
        raise PayloadError(f"job args must be a JSON object (a dict), not {type(args).__name__}")
    for key in args:
        if not isinstance(key, str):
            raise PayloadError(f"job args keys must be strings, got {key!r}")
    # json only knows dict: any other Mapping (the type enqueue accepts) is copied.
    return encode_json(args if isinstance(args, dict) else dict(args), limit, "job args")


def encode_result(value: Any, limit: int) -> str | None:
    """A handler's return value as JSON text (None stays None: no result), under the
    same rules as args; PayloadError says why it cannot be stored."""
    if value is None:
        return None
    return encode_json(value, limit, "the handler's result")


def encode_json(obj: Any, limit: int, what: str) -> str:
    """``obj`` as compact JSON text that jsonb takes, at most ``limit`` bytes."""
    try:
        text = _ENCODER.encode(obj)
    except (TypeError, ValueError) as exc:
        raise PayloadError(f"{what}: not JSON-serializable: {exc}") from None
    except RecursionError:
        raise PayloadError(f"{_too_deep(what)} (too deep to encode)") from None
    # Brackets outside strings are the nesting; their count bounds the depth,
    # so the walk below runs only for values that have that many of them.
    if text.count("{") + text.count("[") > NESTING_LIMIT and _depth(obj) > NESTING_LIMIT:
        raise PayloadError(_too_deep(what))
    if _NUL.search(text):
        # jsonb cannot store U+0000; the statement would fail (inside the caller's transaction).
        raise PayloadError(f"{what}: contains a NUL character (\\u0000), which jsonb cannot store")
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:
        # A lone surrogate ("\ud800") is not valid UTF-8: psycopg could not send it.
        raise PayloadError(f"{what}: contains a lone surrogate, which is not valid UTF-8") from None
    if size > limit:
        raise PayloadError(f"{what}: {size} bytes encoded, over the {limit}-byte limit")
    return text


def _too_deep(what: str) -> str:
    return f"{what}: nested more than {NESTING_LIMIT} levels deep"


def _depth(obj: Any) -> int:
    """How deep dicts and lists nest in ``obj``, without recursion (it may be deep)."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(obj, 1)]
    while stack and deepest <= NESTING_LIMIT:
        value, level = stack.pop()
        if not isinstance(value, (dict, list, tuple)):
            continue
        deepest = max(deepest, level)
        children = value.values() if isinstance(value, dict) else value
        stack.extend((child, level + 1) for child in children
                     if isinstance(child, (dict, list, tuple)))
    return deepest


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


def check_version(version: int) -> int:
    """A job's payload version: an integer from 1 (it fits the ``integer`` column)."""
    if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version < 2**31:
        raise PayloadError(f"version must be an integer >= 1, got {version!r}")
    return version


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


def check_lock_key(value: str | None) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise PayloadError(f"lock must be a non-empty string, not {value!r}")
    if "\x00" in value:
        raise PayloadError("lock contains a NUL character")
    return value
