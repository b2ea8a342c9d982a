"""Cron without a database: parsing, validation and tick computation, DST included.

Ticks are UTC instants computed on the schedule's wall clock. The DST rules
(README, "Periodic jobs") are pinned twice: by hand-checked examples on real
zone data, and against a brute-force reference model that looks at every
minute (or second) around each transition and knows nothing of how
``CronExpression`` searches.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from croniter import croniter

from jobqueue import ConfigError, JobQueue
from jobqueue.cron import CronError, CronExpression, Schedule, tick_key
from jobqueue.errors import PayloadError

UTC = timezone.utc
NY = "America/New_York"


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0,
        second: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def forward(cron: CronExpression, start: datetime, n: int) -> list[datetime]:
    out, t = [], start
    for _ in range(n):
        t = cron.next_after(t)
        out.append(t)
    return out


def hhmm(ticks: list[datetime], tz: str = "UTC") -> list[str]:
    return [t.astimezone(ZoneInfo(tz)).strftime("%H:%M:%S%z") for t in ticks]


# -- parsing ---------------------------------------------------------------------------------


def test_five_fields_fire_on_the_minute_strictly_after() -> None:
    cron = CronExpression("* * * * *")
    assert cron.next_after(utc(2025, 1, 1, 12, 0, 30)) == utc(2025, 1, 1, 12, 1)
    assert cron.next_after(utc(2025, 1, 1, 12, 1)) == utc(2025, 1, 1, 12, 2)
    assert not cron.has_seconds


def test_six_fields_read_seconds_first_not_last() -> None:
    # croniter alone reads a 6th field as seconds: "30 0 * * * *" would then be
    # every second of 00:30. Seconds first, it is second 30 of minute 0 of every hour.
    cron = CronExpression("30 0 * * * *")
    assert cron.has_seconds
    assert forward(cron, utc(2025, 1, 1, 12, 0), 3) == [
        utc(2025, 1, 1, 12, 0, 30), utc(2025, 1, 1, 13, 0, 30), utc(2025, 1, 1, 14, 0, 30)]
    every_20s = CronExpression("*/20 * * * * *")
    assert every_20s.between(utc(2025, 1, 1, 12, 0), utc(2025, 1, 1, 12, 1)) == [
        utc(2025, 1, 1, 12, 0, 20), utc(2025, 1, 1, 12, 0, 40), utc(2025, 1, 1, 12, 1)]


def test_per_second_schedule_has_sub_second_precision() -> None:
    cron = CronExpression("*/1 * * * * *")
    assert cron.next_after(utc(2025, 1, 1, 12, 0, 0) + timedelta(milliseconds=250)) == \
        utc(2025, 1, 1, 12, 0, 1)
    assert cron.next_after(utc(2025, 1, 1, 12, 0, 0) + timedelta(microseconds=999_999)) == \
        utc(2025, 1, 1, 12, 0, 1)
    assert cron.recent(utc(2025, 1, 1, 12, 0, 0) + timedelta(microseconds=999_999), 1) == \
        [utc(2025, 1, 1, 12, 0, 0)]


def test_aliases_and_whitespace() -> None:
    assert CronExpression("@hourly").next_after(utc(2025, 1, 1, 12, 5)) == utc(2025, 1, 1, 13)
    assert CronExpression("@daily").next_after(utc(2025, 1, 1, 12)) == utc(2025, 1, 2)
    cron = CronExpression("  */5   *  * * *\t")
    assert cron.expression == "*/5 * * * *"


def test_recent_is_inclusive_bounded_and_oldest_first() -> None:
    cron = CronExpression("* * * * *")
    until = utc(2025, 1, 1, 12, 0)
    assert cron.recent(until, 3) == [utc(2025, 1, 1, 11, 58), utc(2025, 1, 1, 11, 59), until]
    assert cron.recent(until, 10, since=utc(2025, 1, 1, 11, 59)) == \
        [utc(2025, 1, 1, 11, 59), until]
    assert cron.recent(until, 10, since=utc(2025, 1, 1, 12, 0, 1)) == []
    assert cron.recent(until + timedelta(seconds=59), 1) == [until]


def test_naive_datetimes_are_refused() -> None:
    cron = CronExpression("* * * * *")
    with pytest.raises(ValueError, match="timezone-aware"):
        cron.next_after(datetime(2025, 1, 1))


@pytest.mark.parametrize(("expression", "tz", "fragment"), [
    ("* * * *", "UTC", "has 4 fields"),
    ("* * * * * * *", "UTC", "has 7 fields"),
    ("", "UTC", "empty"),
    ("61 * * * *", "UTC", "invalid cron expression"),
    ("*/0 * * * *", "UTC", "invalid cron expression"),
    ("* * * * * 99", "UTC", "invalid cron expression"),
    ("H * * * *", "UTC", "invalid cron expression"),
    ("0 0 30 2 *", "UTC", "never fires"),
    ("@reboot", "UTC", "unknown cron alias"),
    ("* * * * *", "Mars/Olympus_Mons", "unknown timezone"),
    ("* * * * *", "../../etc/passwd", "unknown timezone"),
])
def test_invalid_expressions_and_zones_are_config_errors(expression: str, tz: str,
                                                         fragment: str) -> None:
    with pytest.raises(CronError, match=fragment) as info:
        CronExpression(expression, tz)
    assert isinstance(info.value, ConfigError) and isinstance(info.value, ValueError)


# -- timezones and DST -------------------------------------------------------------------------


def test_timezone_follows_the_local_clock_across_seasons() -> None:
    cron = CronExpression("0 9 * * *", "Europe/Paris")
    assert cron.next_after(utc(2025, 1, 15)) == utc(2025, 1, 15, 8)  # CET, UTC+1
    assert cron.next_after(utc(2025, 7, 15)) == utc(2025, 7, 15, 7)  # CEST, UTC+2


def test_spring_forward_skipped_times_fire_at_the_end_of_the_gap() -> None:
    # America/New_York, 2025-03-09: 02:00 EST becomes 03:00 EDT (07:00 UTC).
    daily = CronExpression("30 2 * * *", NY)
    assert hhmm(forward(daily, utc(2025, 3, 8, 12), 3), NY) == [
        "03:00:00-0400", "02:30:00-0400", "02:30:00-0400"]
    assert forward(daily, utc(2025, 3, 8, 12), 1) == [utc(2025, 3, 9, 7)]
    half_hourly = CronExpression("*/30 * * * *", NY)
    assert hhmm(forward(half_hourly, utc(2025, 3, 9, 5), 5), NY) == [
        "00:30:00-0500", "01:00:00-0500", "01:30:00-0500", "03:00:00-0400", "03:30:00-0400"]
    # A skipped time and a real tick at the gap's end fire once, together.
    two_and_three = CronExpression("0 2,3 * * *", NY)
    assert forward(two_and_three, utc(2025, 3, 8, 12), 3) == [
        utc(2025, 3, 9, 7), utc(2025, 3, 10, 6), utc(2025, 3, 10, 7)]


def test_fall_back_repeated_times_fire_at_their_first_occurrence_only() -> None:
    # America/New_York, 2025-11-02: 02:00 EDT becomes 01:00 EST (06:00 UTC);
    # 01:00-01:59 happens twice.
    daily = CronExpression("30 1 * * *", NY)
    assert forward(daily, utc(2025, 11, 1, 12), 2) == [utc(2025, 11, 2, 5, 30),
                                                        utc(2025, 11, 3, 6, 30)]
    half_hourly = CronExpression("*/30 * * * *", NY)
    assert hhmm(forward(half_hourly, utc(2025, 11, 2, 4), 6), NY) == [
        "00:30:00-0400", "01:00:00-0400", "01:30:00-0400",  # first pass
        "02:00:00-0500", "02:30:00-0500", "03:00:00-0500"]  # the second pass fires nothing


def test_next_after_from_inside_the_repeated_hour() -> None:
    cron = CronExpression("*/15 * * * *", NY)
    second_pass = utc(2025, 11, 2, 6, 15)  # 01:15 EST, the second 01:15 of the night
    assert cron.next_after(second_pass) == utc(2025, 11, 2, 7)
    assert cron.recent(second_pass, 3) == [utc(2025, 11, 2, 5, 15), utc(2025, 11, 2, 5, 30),
                                           utc(2025, 11, 2, 5, 45)]


def test_half_hour_dst_shift() -> None:
    # Australia/Lord_Howe moves by 30 minutes: 2025-10-05 02:00 -> 02:30 (15:30 UTC).
    cron = CronExpression("15 2 * * *", "Australia/Lord_Howe")
    assert cron.next_after(utc(2025, 10, 4, 6)) == utc(2025, 10, 4, 15, 30)
    assert hhmm([cron.next_after(utc(2025, 10, 4, 6))], "Australia/Lord_Howe") == \
        ["02:30:00+1100"]


# -- against a brute-force reference model -------------------------------------------------


def reference(expression: str, tz_name: str, start: datetime, end: datetime,
              step: timedelta) -> list[datetime]:
    """The rules, applied to every instant of (start, end] one ``step`` apart."""
    tz = ZoneInfo(tz_name)
    seconds_first = len(expression.split()) == 6

    def matches(wall: datetime) -> bool:
        return bool(croniter.match(expression, wall, second_at_beginning=seconds_first))

    out = []
    u = start + step
    while u <= end:
        local = u.astimezone(tz)
        wall = local.replace(tzinfo=None)
        before = (u - step).astimezone(tz)
        fires = local.fold == 0 and matches(wall)  # the first occurrence of a matching time
        if not fires and local.utcoffset() > before.utcoffset():  # type: ignore[operator]
            # u is the end of a gap: the skipped wall times fire here.
            gap = before.replace(tzinfo=None) + step
            while gap < wall and not fires:
                fires = matches(gap)
                gap += step
        if fires:
            out.append(u)
        u += step
    return out


TRANSITIONS = [  # (zone, a UTC instant at a transition)
    (NY, utc(2025, 3, 9, 7)),
    (NY, utc(2025, 11, 2, 6)),
    ("Europe/London", utc(2025, 3, 30, 1)),
    ("Europe/London", utc(2025, 10, 26, 1)),
    ("Australia/Lord_Howe", utc(2025, 4, 5, 15)),
    ("Australia/Lord_Howe", utc(2025, 10, 4, 15, 30)),
]
MINUTE_EXPRESSIONS = ["* * * * *", "*/15 * * * *", "30 * * * *", "30 1 * * *", "30 2 * * *",
                      "0 2,3 * * *", "59 1 * * *", "45 0,1 * * *"]


@pytest.mark.parametrize(("zone", "at"), TRANSITIONS, ids=[f"{z}-{t:%m%d}" for z, t in TRANSITIONS])
@pytest.mark.parametrize("expression", MINUTE_EXPRESSIONS)
def test_ticks_match_the_reference_model_around_transitions(zone: str, at: datetime,
                                                            expression: str) -> None:
    start, end = at - timedelta(hours=3), at + timedelta(hours=3)
    cron = CronExpression(expression, zone)
    expected = reference(expression, zone, start, end, timedelta(minutes=1))
    assert cron.between(start, end) == expected
    if expected:
        assert cron.recent(end, len(expected) + 5, since=start + timedelta(seconds=1)) == expected
        assert cron.recent(end, 1) == expected[-1:]


@pytest.mark.parametrize(("zone", "at"), TRANSITIONS, ids=[f"{z}-{t:%m%d}" for z, t in TRANSITIONS])
@pytest.mark.parametrize("expression", ["*/20 * * * * *", "* * * * * *"])
def test_per_second_ticks_match_the_reference_model(zone: str, at: datetime,
                                                    expression: str) -> None:
    start, end = at - timedelta(minutes=4), at + timedelta(minutes=4)
    cron = CronExpression(expression, zone)
    expected = reference(expression, zone, start, end, timedelta(seconds=1))
    assert cron.between(start, end) == expected
    assert cron.recent(end, len(expected), since=start + timedelta(microseconds=1)) == expected


@pytest.mark.parametrize("zone", ["UTC", "Asia/Kolkata", "Etc/GMT+5"])
@pytest.mark.parametrize("expression", ["*/7 * * * *", "0 */3 * * 1-5", "15 4 1 * *",
                                        "*/13 * * * * *"])
def test_zones_without_dst_agree_with_croniter(zone: str, expression: str) -> None:
    tz = ZoneInfo(zone)
    start = datetime(2025, 2, 27, 22, 0, 3, tzinfo=tz)
    own = forward(CronExpression(expression, zone), start, 40)
    theirs = croniter(expression, start, ret_type=datetime,
                      second_at_beginning=len(expression.split()) == 6)
    assert own == [theirs.get_next().astimezone(UTC) for _ in range(40)]


# -- schedules -------------------------------------------------------------------------------


def test_schedule_keeps_args_as_validated_json() -> None:
    s = Schedule.build("nightly", "0 3 * * *", "report", {"kind": "daily"})
    assert s.args == {"kind": "daily"} and s.args_json == '{"kind":"daily"}'
    assert (s.overlap, s.catch_up, s.timezone, s.queue, s.priority) == ("skip", 1, "UTC", None,
                                                                        None)


@pytest.mark.parametrize(("kwargs", "error", "fragment"), [
    ({"overlap": "queue"}, CronError, "overlap must be one of"),
    ({"catch_up": 0}, CronError, "catch_up must be an int >= 1"),
    ({"catch_up": True}, CronError, "catch_up must be an int >= 1"),
    ({"queue": ""}, CronError, "queue must be a non-empty string"),
    ({"priority": 70000}, PayloadError, "priority must be within"),
    ({"args": ["not", "a", "dict"]}, PayloadError, "JSON object"),
    ({"args": {"when": datetime(2025, 1, 1)}}, PayloadError, "not JSON-serializable"),
    ({"timezone": "Nowhere/Special"}, CronError, "unknown timezone"),
    ({"name": ""}, CronError, "non-empty name"),
    ({"name": " padded "}, CronError, "non-empty name"),
])
def test_schedule_validation(kwargs: dict[str, object], error: type[Exception],
                             fragment: str) -> None:
    params: dict[str, object] = {"name": "s", "expression": "* * * * *", "task": "t"} | kwargs
    with pytest.raises(error, match=fragment):
        Schedule.build(**params)  # type: ignore[arg-type]


def test_app_cron_registers_by_task_reference_and_refuses_duplicate_names() -> None:
    app = JobQueue("postgresql://nobody@127.0.0.1:1/none", schema="cron_unit")

    @app.task(queue="reports")
    def build_report(kind: str) -> None: ...

    s = app.cron("nightly", "0 3 * * *", build_report, {"kind": "daily"}, timezone="Europe/Paris")
    assert s.task == "build_report" and app.schedules == {"nightly": s}
    app.cron("hourly", "@hourly", "some_other_task")  # by name, registered elsewhere or later
    with pytest.raises(CronError, match="'nightly' is already defined"):
        app.cron("nightly", "0 4 * * *", build_report)
    assert app.schedules["nightly"].expression == "0 3 * * *"
    # Validation happens at definition time, not in a worker hours later.
    with pytest.raises(CronError, match="never fires"):
        app.cron("feb30", "0 0 30 2 *", build_report)
    assert "feb30" not in app.schedules


def test_payload_limit_of_the_app_applies_to_schedule_args() -> None:
    app = JobQueue("postgresql://nobody@127.0.0.1:1/none", schema="cron_unit", payload_limit=100)
    with pytest.raises(PayloadError, match="over the 100-byte limit"):
        app.cron("big", "* * * * *", "t", {"blob": "x" * 200})


def test_tick_key_names_the_schedule_and_the_utc_instant() -> None:
    paris = datetime(2025, 7, 1, 9, 0, tzinfo=ZoneInfo("Europe/Paris"))
    assert tick_key("nightly", paris) == "cron:nightly:2025-07-01T07:00:00+00:00"
    assert tick_key("a:b", utc(2025, 1, 1)) == "cron:a:b:2025-01-01T00:00:00+00:00"
