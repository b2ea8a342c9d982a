"""A claimed job as the worker sees it, and the record of one failed attempt."""

from __future__ import annotations

import json
import traceback
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

TRACEBACK_LIMIT = 8 * 1024
MESSAGE_LIMIT = 2 * 1024


@dataclass(slots=True)
class ClaimedJob:
    id: int
    queue: str
    task: str
    args: dict[str, Any]
    attempts: int
    max_attempts: int
    priority: int
    run_at: datetime
    created_at: datetime
    lock_key: str | None = None
    correlation_id: str | None = None
    cancel_requested: bool = False  # cancelled while it waited for a retry


def error_entry(
    *,
    attempt: int,
    worker_id: str,
    type_name: str,
    message: str,
    exc: BaseException | None = None,
) -> str:
    """One element of a job's ``errors`` array, as JSON text.

    The traceback keeps its tail (where the error is) within a bounded size so
    that a job failing in a deep stack cannot bloat its row.
    """
    tb = None
    if exc is not None and exc.__traceback__ is not None:
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        if len(tb) > TRACEBACK_LIMIT:
            tb = "...\n" + tb[-TRACEBACK_LIMIT:]
    return json.dumps(
        {
            "at": datetime.now(timezone.utc).isoformat(),
            "attempt": attempt,
            "worker": worker_id,
            "type": type_name,
            "message": message[:MESSAGE_LIMIT],
            "traceback": tb,
        }
    )


def exception_name(exc: BaseException) -> str:
    cls = type(exc)
    if cls.__module__ == "builtins":
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"
