"""Validation of a job before any SQL is sent: args, delay, run_at; and DSN redaction.

These checks are what keeps enqueue from poisoning a caller's transaction, so
every way Postgres could refuse a payload must be refused here first, with
:class:`jobqueue.PayloadError`. No database is needed.
"""

from __future__ import annotations

import json
import math
import types
from collections import OrderedDict
from datetime import datetime, timedelta, timezone, tzinfo
from decimal import Decimal
from typing import Any
from urllib.parse import quote

import psycopg.conninfo
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from jobqueue import JobQueueError, PayloadError
from jobqueue.config import DEFAULT_PAYLOAD_LIMIT, redact_dsn
from jobqueue.payload import NESTING_LIMIT, check_run_at, delay_seconds, encode_args

LIMIT = DEFAULT_PAYLOAD_LIMIT

# -- encode_args: what is accepted ---------------------------------------------------------


def test_none_means_empty_object() -> None:
    assert encode_args(None, LIMIT) == "{}"
    assert encode_args({}, LIMIT) == "{}"


def test_encoding_is_compact_json_that_keeps_order_and_unicode() -> None:
    args = {"b": 1, "a": [True, None, 1.5], "name": "Zoë ✓", "nested": {"x": {"y": "z"}}}
    text = encode_args(args, LIMIT)
    # Compact (no spaces after separators) so the size limit counts what is stored.
    assert text == '{"b":1,"a":[true,null,1.5],"name":"Zoë ✓","nested":{"x":{"y":"z"}}}'
    assert json.loads(text) == args


@pytest.mark.parametrize("mapping", [
    OrderedDict([("k", 1)]),
    types.MappingProxyType({"k": 1}),
], ids=["OrderedDict", "MappingProxyType"])
def test_any_mapping_is_a_json_object(mapping: Any) -> None:
    assert encode_args(mapping, LIMIT) == '{"k":1}'


def test_escaped_backslash_u0000_is_text_not_nul() -> None:
    # The six characters \u0000 (a backslash, then "u0000") are ordinary text:
    # JSON escapes the backslash and jsonb stores it fine.
    assert json.loads(encode_args({"s": "\\u0000"}, LIMIT)) == {"s": "\\u0000"}
    assert json.loads(encode_args({"s": "\\\\u0000"}, LIMIT)) == {"s": "\\\\u0000"}


# -- encode_args: what is refused ------------------------------------------------------------

NOT_A_DICT = [[1, 2], ("a", 1), "text", 3, 1.5, True, b"{}", {"a", "b"}]


@pytest.mark.parametrize("args", NOT_A_DICT, ids=lambda a: type(a).__name__)
def test_args_must_be_a_mapping(args: Any) -> None:
    with pytest.raises(PayloadError, match="JSON object"):
        encode_args(args, LIMIT)


@pytest.mark.parametrize("key", [1, 1.5, None, True, ("a", "b"), b"k"],
                         ids=lambda k: type(k).__name__)
def test_keys_must_be_strings(key: Any) -> None:
    # json.dumps would silently turn 1 into "1": the handler's kwargs would change.
    with pytest.raises(PayloadError, match="keys must be strings"):
        encode_args({key: "v"}, LIMIT)


NOT_SERIALIZABLE = {
    "set": {"tags": {"a", "b"}},
    "frozenset": {"tags": frozenset()},
    "datetime": {"at": datetime(2024, 1, 1, tzinfo=timezone.utc)},
    "timedelta": {"d": timedelta(seconds=1)},
    "bytes": {"raw": b"\x00\x01"},
    "decimal": {"amount": Decimal("1.10")},
    "object": {"o": object()},
    "nested set": {"outer": [{"inner": {1, 2}}]},
    "tuple key nested": {"outer": {("a", "b"): 1}},
    "NaN": {"x": math.nan},
    "+inf": {"x": math.inf},
    "-inf": {"x": -math.inf},
    "nested NaN": {"xs": [1.0, float("nan")]},
}


@pytest.mark.parametrize("args", NOT_SERIALIZABLE.values(), ids=NOT_SERIALIZABLE.keys())
def test_values_must_be_json(args: dict[str, Any]) -> None:
    with pytest.raises(PayloadError, match="not JSON-serializable"):
        encode_args(args, LIMIT)


NUL = {
    "in a value": {"s": "a\x00b"},
    "alone": {"s": "\x00"},
    "in a key": {"a\x00": 1},
    "nested in a list": {"xs": ["ok", ["deep\x00"]]},
    "nested in a key": {"d": {"k\x00": 1}},
    "after a backslash": {"s": "\\\x00"},
}


@pytest.mark.parametrize("args", NUL.values(), ids=NUL.keys())
def test_nul_characters_are_refused(args: dict[str, Any]) -> None:
    # jsonb cannot store U+0000: Postgres would fail the INSERT inside the
    # caller's transaction, so it must be caught here.
    with pytest.raises(PayloadError, match="NUL"):
        encode_args(args, LIMIT)


@pytest.mark.parametrize("args", [{"s": "\ud800"}, {"s": "ok\udfff"}, {"\udc80": 1}],
                         ids=["high", "low", "in a key"])
def test_lone_surrogates_are_refused(args: dict[str, Any]) -> None:
    with pytest.raises(PayloadError, match="surrogate"):
        encode_args(args, LIMIT)


def _nested(levels: int) -> dict[str, Any]:
    """Dicts and lists alternating, ``levels`` deep (the top dict is one level)."""
    inner: Any = {}
    for level in range(levels - 1):
        inner = {"d": inner} if level % 2 else [inner]
    # The top level must be a dict: a list there becomes one, at the same depth.
    return inner if isinstance(inner, dict) else {"d": inner[0]}


@pytest.mark.parametrize("levels", [501, 990, 5_000, 100_000])
def test_args_nested_beyond_the_limit_are_refused(levels: int) -> None:
    # Deep enough, Python's encoder raises RecursionError; it must not escape.
    with pytest.raises(PayloadError, match=f"nested more than {NESTING_LIMIT} levels"):
        encode_args(_nested(levels), LIMIT)


def test_args_nested_to_the_limit_pass() -> None:
    deepest = _nested(NESTING_LIMIT)
    text = encode_args(deepest, LIMIT)
    assert json.loads(text) == deepest
    # Brackets inside strings are text, not nesting: no false alarm.
    assert encode_args({"s": "[{" * 5_000}, LIMIT)


def test_payload_error_is_a_jobqueue_error_and_a_value_error() -> None:
    with pytest.raises(JobQueueError):
        encode_args({"x": math.nan}, LIMIT)
    with pytest.raises(ValueError):
        encode_args({"x": math.nan}, LIMIT)


# -- encode_args: the size limit -------------------------------------------------------------


def _args_of_size(size: int, char: str = "x") -> dict[str, str]:
    """Args whose compact encoding is exactly ``size`` bytes ('{"s":""}' is 8)."""
    width = len(char.encode("utf-8"))
    assert (size - 8) % width == 0
    return {"s": char * ((size - 8) // width)}


@pytest.mark.parametrize("limit", [8, 100, LIMIT])
def test_limit_is_inclusive(limit: int) -> None:
    at_limit = _args_of_size(limit)
    assert len(encode_args(at_limit, limit).encode()) == limit
    with pytest.raises(PayloadError, match=f"{limit + 1} bytes.*{limit}-byte limit"):
        encode_args(_args_of_size(limit + 1), limit)


def test_default_limit_is_64_kib() -> None:
    assert LIMIT == 64 * 1024


def test_limit_counts_utf8_bytes_not_characters() -> None:
    # "é" is one character but two bytes: 46 of them are 92 bytes + 8 = 100.
    args = _args_of_size(100, "é")
    assert len(json.dumps(args, ensure_ascii=False, separators=(",", ":"))) == 54
    assert encode_args(args, 100)
    with pytest.raises(PayloadError, match="102 bytes"):
        encode_args(_args_of_size(102, "é"), 100)


# -- encode_args: properties -----------------------------------------------------------------

json_scalars = st.none() | st.booleans() | st.integers() | st.text() \
    | st.floats(allow_nan=False, allow_infinity=False)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, list):
        return any(_has_nul(v) for v in value)
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    return False


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.text(), json_values, max_size=6))
def test_accepted_args_round_trip_and_nul_is_always_refused(args: dict[str, Any]) -> None:
    if _has_nul(args):
        with pytest.raises(PayloadError):
            encode_args(args, 10**9)
    else:
        assert json.loads(encode_args(args, 10**9)) == args


# -- delay_seconds ---------------------------------------------------------------------------


@pytest.mark.parametrize(("delay", "seconds"), [
    (None, 0.0),
    (0, 0.0),
    (5, 5.0),
    (2.5, 2.5),
    (timedelta(0), 0.0),
    (timedelta(minutes=1, microseconds=5), 60.000005),
    (timedelta(days=2), 172800.0),
])
def test_delay_seconds(delay: float | timedelta | None, seconds: float) -> None:
    result = delay_seconds(delay)
    assert isinstance(result, float)
    assert result == seconds


@pytest.mark.parametrize("delay", [-1, -0.001, timedelta(seconds=-1), math.nan, math.inf,
                                   -math.inf])
def test_bad_delays_are_refused(delay: float | timedelta) -> None:
    with pytest.raises(PayloadError, match="delay"):
        delay_seconds(delay)


# -- check_run_at ----------------------------------------------------------------------------


class _NoOffset(tzinfo):
    """A tzinfo that does not know its offset: as ambiguous as a naive datetime."""

    def utcoffset(self, dt: datetime | None) -> timedelta | None:
        return None

    def dst(self, dt: datetime | None) -> timedelta | None:
        return None

    def tzname(self, dt: datetime | None) -> str | None:
        return None


def test_aware_run_at_is_kept_as_is() -> None:
    assert check_run_at(None) is None
    utc = datetime(2030, 5, 1, 12, 0, tzinfo=timezone.utc)
    assert check_run_at(utc) is utc
    tokyo = datetime(2030, 5, 1, 21, 0, tzinfo=timezone(timedelta(hours=9)))
    assert check_run_at(tokyo) is tokyo


@pytest.mark.parametrize("run_at", [datetime(2030, 5, 1, 12, 0),
                                    datetime(2030, 5, 1, 12, 0, tzinfo=_NoOffset())],
                         ids=["naive", "tzinfo without offset"])
def test_run_at_without_a_timezone_is_refused(run_at: datetime) -> None:
    # A naive time would be read in the session's TimeZone: a job could run
    # hours early or late depending on the server's settings.
    with pytest.raises(PayloadError, match="timezone-aware"):
        check_run_at(run_at)


# -- redact_dsn ------------------------------------------------------------------------------

SECRET = "s3cr3t-Pa55"


@pytest.mark.parametrize("dsn", [
    f"postgresql://app:{SECRET}@db.example:5432/appdb",
    f"postgres://app:{SECRET}@db.example/appdb?sslmode=require",
    f"postgresql://app@db.example/appdb?password={SECRET}",
    f"postgresql://app:{SECRET}@/appdb?host=/run/postgresql",
    f"host=db.example port=5432 user=app password={SECRET} dbname=appdb",
    f"host=db.example user=app password = '{SECRET}' dbname=appdb",
    f"password={SECRET} host=db.example",
    f"password=other-one password={SECRET} host=db.example",
], ids=["uri", "uri+query", "uri ?password=", "uri socket", "kv", "kv quoted", "kv first",
        "kv twice"])
def test_password_is_replaced(dsn: str) -> None:
    out = redact_dsn(dsn)
    assert SECRET not in out
    assert "other-one" not in out
    params = psycopg.conninfo.conninfo_to_dict(out)
    assert params["password"] == "***"
    # Everything that is not secret survives, so the line is still useful in a log.
    original = psycopg.conninfo.conninfo_to_dict(dsn)
    assert {k: v for k, v in params.items() if k != "password"} == \
        {k: v for k, v in original.items() if k != "password"}


def test_percent_encoded_password_leaks_in_neither_form() -> None:
    out = redact_dsn("postgresql://app:p%40ss%20phrase@db.example/appdb")
    assert "p%40ss" not in out
    assert "p@ss" not in out
    assert "phrase" not in out


def test_quoted_password_with_spaces_and_quotes() -> None:
    out = redact_dsn(r"host=db.example password='my \'very\' secret' user=app")
    for piece in ("my", "very", "secret"):
        assert piece not in out
    assert psycopg.conninfo.conninfo_to_dict(out)["user"] == "app"


def test_dsn_without_password_keeps_its_meaning() -> None:
    for dsn in ("postgresql://app@db.example:5433/appdb", "host=db.example dbname=appdb"):
        out = redact_dsn(dsn)
        assert "***" not in out
        assert psycopg.conninfo.conninfo_to_dict(out) == psycopg.conninfo.conninfo_to_dict(dsn)


@pytest.mark.parametrize("dsn", [
    f"postgresql://app:{SECRET}@db.example/appdb?no_such_option=1",
    f"host=db.example password='{SECRET}",
    f"host=db.example password={SECRET} no_such_option=1",
    f"postgresql://app:{SECRET}@[::1/appdb",
    f"{SECRET} is not a dsn",
], ids=["uri bad option", "kv unterminated quote", "kv bad option", "uri bad host", "garbage"])
def test_unparseable_dsn_shows_nothing(dsn: str) -> None:
    with pytest.raises(psycopg.ProgrammingError):
        psycopg.conninfo.conninfo_to_dict(dsn)  # the premise: libpq refuses it
    out = redact_dsn(dsn)
    assert SECRET not in out
    assert out == "<unparseable DSN>"


password_text = st.text(
    st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=40)


@settings(max_examples=200, deadline=None)
@given(password=password_text)
def test_no_password_ever_leaks(password: str) -> None:
    kv = psycopg.conninfo.make_conninfo("", host="db.example", user="app", dbname="appdb",
                                        password=password)
    uri = f"postgresql://app:{quote(password, safe='')}@db.example/appdb"
    for dsn, bare in ((kv, "host=db.example user=app dbname=appdb"),
                      (uri, "postgresql://app@db.example/appdb")):
        # A password that is also a piece of the rest ("app", "e", "*") proves nothing.
        shown = redact_dsn(bare) + " password=***"
        assume(password not in shown and quote(password, safe="") not in shown)
        out = redact_dsn(dsn)
        assert password not in out
        assert quote(password, safe="") not in out
