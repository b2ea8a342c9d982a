"""Statements of the cron scheduler (see :mod:`jobqueue.worker.scheduler`)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from jobqueue.db.statement import Op, row, rows


@dataclass(frozen=True, slots=True)
class Lead:
    """Whether this scheduler leads the round, and the database's clock."""

    leader: bool
    now: datetime
    durable: str
    bounded: str


@dataclass(frozen=True, slots=True)
class Change:
    change: str  # added, changed, retired
    name: str


@dataclass(frozen=True, slots=True)
class Cursor:
    name: str
    last_fire_at: datetime | None
    next_fire_at: datetime | None


@dataclass(frozen=True, slots=True)
class FireResult:
    advanced: bool
    busy: bool
    ids: list[int]
    ticks: list[datetime] | None
    n: int


def lead(key: int) -> Op:
    return row("cron_lead", {"key": key}, Lead)


def sync(definitions: dict[str, list[Any]]) -> Op:
    return rows("cron_sync", definitions, Change)


def cursors(names: list[str]) -> Op:
    return rows("cron_state", {"names": names}, Cursor)


def fire(params: dict[str, Any]) -> Op:
    return row("cron_fire", params, FireResult)
