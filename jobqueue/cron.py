"""Cron: schedule definitions, expression parsing and tick computation.

An expression has 5 fields (minute hour day-of-month month day-of-week) or 6
with seconds *first* (second minute hour day-of-month month day-of-week), or is
one of the aliases ``@hourly``, ``@daily``, ``@midnight``, ``@weekly``,
``@monthly``, ``@yearly``/``@annually``. Parsing and calendar arithmetic are
croniter's; croniter reads a plain 6-field expression with the seconds *last*,
so 6-field expressions are handed to it with ``second_at_beginning=True``.

A tick is an instant (a timezone-aware UTC datetime). Ticks are computed on the
wall clock of the schedule's timezone (``zoneinfo``), and then placed on the
timeline by these rules, which decide what daylight-saving changes do:

* each wall-clock time that matches the expression fires once;
* a wall-clock time that does not exist (skipped when clocks go forward) fires
  at the first instant after the gap; several such times, and a real tick at
  that instant, fire once together;
* a wall-clock time that happens twice (when clocks go back) fires at its
  first occurrence only: the repeated stretch fires nothing the second time.

So ``30 2 * * *`` in America/New_York fires at 03:00 EDT on the day 02:30 is
skipped, and ``30 1 * * *`` fires once (at 01:30 EDT) on the day 01:30 happens
twice; an interval schedule such as ``*/15 * * * *`` in such a zone fires
nothing during the repeated hour. Schedules in UTC (the default) are unaffected.

croniter itself would fire a repeated wall time twice and leave the mapping of
skipped times to its own DST code; doing the mapping here, on naive wall-clock
times that croniter only does calendar arithmetic on, keeps the rules above
explicit and tested.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterError, croniter

from jobqueue.config import DEFAULT_PAYLOAD_LIMIT
from jobqueue.errors import ConfigError
from jobqueue.payload import check_priority, encode_args

UTC = timezone.utc
OVERLAP_MODES = ("skip", "allow")
ALIASES = frozenset({"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight",
                     "@hourly"})
_SECOND = timedelta(seconds=1)
_EPOCH = datetime(1970, 1, 1)


class CronError(ConfigError, ValueError):
    """A schedule that cannot work: bad expression, timezone, overlap mode, name..."""


def _aware(instant: datetime, what: str) -> datetime:
    if instant.tzinfo is None or instant.utcoffset() is None:
        raise ValueError(f"{what} must be timezone-aware")
    return instant.astimezone(UTC)


class CronExpression:
    """A validated cron expression in a timezone; computes its ticks as UTC instants."""

    def __init__(self, expression: str, timezone: str = "UTC") -> None:
        text = " ".join(str(expression).split())
        if not text:
            raise CronError("empty cron expression")
        if text.startswith("@"):
            if text.lower() not in ALIASES:
                known = ", ".join(sorted(ALIASES))
                raise CronError(f"unknown cron alias {text!r} (known: {known})")
            self.has_seconds = False
        else:
            n = len(text.split(" "))
            if n not in (5, 6):
                raise CronError(
                    f"cron expression {text!r} has {n} fields: use 5 (minute hour day month "
                    "weekday) or 6 with seconds first (second minute hour day month weekday)")
            self.has_seconds = n == 6
        self.expression = text
        self.timezone = timezone
        try:
            self.tz = ZoneInfo(timezone)
        except (ZoneInfoNotFoundError, ValueError, TypeError):
            raise CronError(f"unknown timezone {timezone!r} (use an IANA name such as "
                            "'UTC' or 'Europe/Paris')") from None
        try:
            self._iter = croniter(text, _EPOCH, ret_type=datetime,
                                  second_at_beginning=self.has_seconds)
        except CroniterError as exc:
            raise CronError(f"invalid cron expression {text!r}: {exc}") from None
        # croniter objects keep a cursor: one user at a time.
        self._guard = threading.Lock()
        try:
            self.next_after(datetime.now(UTC))
        except CroniterError:
            raise CronError(f"cron expression {text!r} never fires") from None

    def __repr__(self) -> str:
        return f"CronExpression({self.expression!r}, {self.timezone!r})"

    # -- wall clock <-> instants ----------------------------------------------------------

    def _wall(self, instant: datetime) -> tuple[datetime, int]:
        local = instant.astimezone(self.tz)
        return local.replace(tzinfo=None), local.fold

    def _transition(self, lo: datetime, hi: datetime) -> datetime:
        """The instant in (lo, hi] at which the UTC offset changes to hi's.

        Transitions fall on whole seconds, and lo and hi are at most a DST
        shift apart, so a bisection over seconds takes a dozen steps.
        """
        target = hi.astimezone(self.tz).utcoffset()
        a, b = int(lo.timestamp()), int(hi.timestamp())
        while b - a > 1:
            mid = (a + b) // 2
            if datetime.fromtimestamp(mid, self.tz).utcoffset() == target:
                b = mid
            else:
                a = mid
        return datetime.fromtimestamp(b, UTC)

    def _place(self, wall: datetime) -> tuple[datetime, datetime | None]:
        """The instant a matching wall time fires at; for one in a gap, also the gap's start."""
        first = wall.replace(tzinfo=self.tz, fold=0)
        second = wall.replace(tzinfo=self.tz, fold=1)
        at = first.astimezone(UTC)
        if first.utcoffset() == second.utcoffset():
            return at, None  # an ordinary wall time: one reading
        if at.astimezone(self.tz).replace(tzinfo=None) == wall:
            return at, None  # it happens twice: fire at the first occurrence
        # It does not exist. fold=1 reads it with the offset after the change
        # (an instant before the gap), fold=0 with the offset before it (after).
        change = self._transition(second.astimezone(UTC), at)
        offset_before = first.utcoffset()
        assert offset_before is not None
        gap_start = change.replace(tzinfo=None) + offset_before
        return change, gap_start

    def _repeat_end(self, wall: datetime) -> datetime:
        """For a wall time on its second pass: the wall time at which the repeat ends."""
        first = wall.replace(tzinfo=self.tz, fold=0)
        second = wall.replace(tzinfo=self.tz, fold=1)
        change = self._transition(first.astimezone(UTC), second.astimezone(UTC))
        offset_before = first.utcoffset()
        assert offset_before is not None
        return change.replace(tzinfo=None) + offset_before

    # -- ticks ------------------------------------------------------------------------------

    def next_after(self, after: datetime) -> datetime:
        """The first tick strictly after ``after``."""
        after = _aware(after, "after")
        wall, fold = self._wall(after)
        if fold == 1:
            # On the second pass of a repeated stretch every wall time up to the
            # stretch's end already fired on the first pass, before `after`.
            wall = self._repeat_end(wall) - timedelta(microseconds=1)
        with self._guard:
            while True:
                candidate = self._iter.get_next(datetime, start_time=wall)
                at, _ = self._place(candidate)
                if at > after:
                    return at
                wall = candidate

    def recent(self, until: datetime, limit: int, since: datetime | None = None) -> list[datetime]:
        """Up to ``limit`` most recent ticks in ``[since, until]``, oldest first."""
        until = _aware(until, "until")
        since = _aware(since, "since") if since is not None else None
        wall, fold = self._wall(until)
        # get_prev looks strictly before its start: start one second past the
        # last whole second so that a tick exactly at `until` counts.
        start = (self._repeat_end(wall) if fold == 1
                 else wall.replace(microsecond=0) + _SECOND)
        found: list[datetime] = []
        with self._guard:
            while len(found) < limit:
                candidate = self._iter.get_prev(datetime, start_time=start)
                at, gap_start = self._place(candidate)
                if since is not None and at < since:
                    break
                if at <= until and (not found or at < found[-1]):
                    found.append(at)
                # Every wall time of a gap fires at the same instant: jump over the rest.
                start = gap_start if gap_start is not None else candidate
        found.reverse()
        return found

    def between(self, after: datetime, until: datetime) -> list[datetime]:
        """Every tick in ``(after, until]``, in order (for small ranges: tests and listings)."""
        out: list[datetime] = []
        tick = self.next_after(after)
        while tick <= until:
            out.append(tick)
            tick = self.next_after(tick)
        return out


def tick_key(name: str, tick: datetime) -> str:
    """The unique_key of the job fired for ``tick``: one live job per (schedule, tick)."""
    return f"cron:{name}:{_aware(tick, 'tick').isoformat()}"


@dataclass(frozen=True)
class Schedule:
    """One periodic job: ``app.cron(name, expression, task, args, ...)``."""

    name: str
    cron: CronExpression
    task: str
    args: dict[str, Any]
    args_json: str
    overlap: str = "skip"
    catch_up: int = 1
    queue: str | None = None
    priority: int | None = None

    @property
    def expression(self) -> str:
        return self.cron.expression

    @property
    def timezone(self) -> str:
        return self.cron.timezone

    @classmethod
    def build(cls, name: str, expression: str, task: str, args: Any = None, *,
              overlap: str = "skip", timezone: str = "UTC", catch_up: int = 1,
              queue: str | None = None, priority: int | None = None,
              payload_limit: int = DEFAULT_PAYLOAD_LIMIT) -> Schedule:
        if not isinstance(name, str) or not name.strip() or name != name.strip():
            raise CronError(f"a schedule needs a non-empty name without surrounding spaces, "
                            f"got {name!r}")
        if overlap not in OVERLAP_MODES:
            raise CronError(f"overlap must be one of {OVERLAP_MODES}, got {overlap!r}")
        if isinstance(catch_up, bool) or not isinstance(catch_up, int) or catch_up < 1:
            raise CronError(f"catch_up must be an int >= 1 (missed ticks to fire after "
                            f"downtime), got {catch_up!r}")
        if priority is not None:
            check_priority(priority)
        if queue is not None and (not isinstance(queue, str) or not queue):
            raise CronError(f"queue must be a non-empty string, got {queue!r}")
        args_json = encode_args(args, payload_limit)
        return cls(name=name, cron=CronExpression(expression, timezone), task=task,
                   args=json.loads(args_json), args_json=args_json, overlap=overlap,
                   catch_up=catch_up, queue=queue, priority=priority)
