"""Transactional enqueue through a psycopg ``Connection``, and through jobqueue's own pool.

With ``conn=`` a job exists if and only if the caller commits: jobqueue never
commits or rolls back for the caller, and everything that can be wrong with a
job is refused before any SQL is sent, so a bad enqueue cannot poison the
caller's transaction. Without ``conn`` jobqueue commits on its own pooled
connection. ``enqueue_many`` is one round trip, observed on the wire through
the libpq trace rather than taken on trust.
"""

from __future__ import annotations

import contextlib
import math
import re
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import pq, sql

from jobqueue import JobQueue, PayloadError, SchemaNotMigratedError, UnknownTaskError
from jobqueue import sql as queries
from jobqueue.db import migrate
from jobqueue.db.jobs import ClaimRequest
from jobqueue.payload import NESTING_LIMIT, encode_args
from tests.helpers import count, wait_until, worker_thread

Conn = psycopg.Connection[Any]
INTRANS = pq.TransactionStatus.INTRANS
IDLE = pq.TransactionStatus.IDLE
UTC = timezone.utc


# -- fixtures and helpers ----------------------------------------------------------------------


class Runs:
    """What the ``record`` handler ran, and when, as seen from the worker's threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._runs: list[tuple[str, datetime]] = []

    def add(self, tag: str) -> None:
        with self._lock:
            self._runs.append((tag, datetime.now(UTC)))

    def tags(self) -> list[str]:
        with self._lock:
            return [tag for tag, _ in self._runs]

    def time_of(self, tag: str) -> datetime:
        with self._lock:
            (when,) = [at for t, at in self._runs if t == tag]
        return when

    def wait_for(self, *tags: str) -> None:
        wait_until(lambda: set(tags) <= set(self.tags()), 20, message=f"jobs {tags} to run")


@pytest.fixture
def runs(app: JobQueue) -> Runs:
    """Registers ``record`` (runs are recorded) and ``plain`` (only ever enqueued)."""
    runs = Runs()

    @app.task(name="record")
    def record(tag: str, **_: Any) -> None:
        runs.add(tag)

    @app.task()
    def plain(**_: Any) -> None:
        """A task that is only enqueued and inspected, never run."""

    return runs


@pytest.fixture
def accounts(admin: Conn, migrated: str) -> str:
    """A business table beside the queue: the writes that a job must commit with."""
    admin.execute(sql.SQL("CREATE TABLE {} (id bigserial PRIMARY KEY, name text NOT NULL)")
                  .format(sql.Identifier(migrated, "accounts")))
    return "accounts"


def add_account(conn: Conn, schema: str, name: str) -> None:
    conn.execute(sql.SQL("INSERT INTO {} (name) VALUES (%s)")
                 .format(sql.Identifier(schema, "accounts")), [name])


def jobs_by_id(conn: Conn, schema: str) -> dict[int, tuple[str, Any]]:
    rows = conn.execute(sql.SQL("SELECT id, task, args FROM {}")
                        .format(sql.Identifier(schema, "jobs"))).fetchall()
    return {r[0]: (r[1], r[2]) for r in rows}


@dataclass
class Wire:
    """The protocol messages libpq exchanged while traced."""

    text: str = ""

    def messages(self) -> list[tuple[str, str]]:
        # Statement text may span lines; real messages start with "F|B <tab> length <tab>".
        return re.findall(r"^([FB])\t\d+\t(\w+)", self.text, re.MULTILINE)

    def sent(self, kind: str) -> int:
        return self.messages().count(("F", kind))

    @property
    def round_trips(self) -> int:
        # The server ends every exchange (simple query or extended-protocol Sync)
        # with exactly one ReadyForQuery.
        return self.messages().count(("B", "ReadyForQuery"))


@contextlib.contextmanager
def wire(conn: Conn) -> Iterator[Wire]:
    seen = Wire()
    with tempfile.TemporaryFile() as f:
        conn.pgconn.trace(f.fileno())
        conn.pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS | pq.Trace.REGRESS_MODE)
        try:
            yield seen
        finally:
            conn.pgconn.untrace()  # flushes libpq's buffer into the file
            f.seek(0)
            seen.text = f.read().decode("utf-8", "replace")


# -- commit, rollback, and whose transaction it is ---------------------------------------------


def test_job_is_invisible_until_the_caller_commits_then_runs(
        app: JobQueue, runs: Runs, conn: Conn, admin: Conn, accounts: str) -> None:
    add_account(conn, app.schema, "ada")
    job_id = app.enqueue("record", {"tag": "welcome-ada"}, conn=conn)

    # jobqueue did not commit (nor end) the caller's transaction...
    assert conn.info.transaction_status == INTRANS
    # ...so from another connection neither the business row nor the job exists yet,
    assert count(admin, app.schema, accounts) == 0
    assert count(admin, app.schema, "jobs") == 0
    # while inside the transaction both do.
    assert count(conn, app.schema, "jobs", "id = %s", [job_id]) == 1

    conn.commit()
    assert count(admin, app.schema, accounts) == 1
    assert jobs_by_id(admin, app.schema) == {job_id: ("record", {"tag": "welcome-ada"})}
    with worker_thread(app):
        runs.wait_for("welcome-ada")
        wait_until(lambda: count(admin, app.schema, "jobs") == 0, message="the ack")
    assert runs.tags() == ["welcome-ada"]


@pytest.mark.parametrize("how", ["rollback()", "exception in transaction()"])
def test_rolled_back_job_never_exists_and_never_runs(
        how: str, app: JobQueue, runs: Runs, conn: Conn, admin: Conn, accounts: str) -> None:
    if how == "rollback()":
        add_account(conn, app.schema, "bob")
        app.enqueue("record", {"tag": "rolled-back"}, conn=conn)
        conn.rollback()
    else:
        with pytest.raises(RuntimeError), conn.transaction():
            add_account(conn, app.schema, "bob")
            app.enqueue("record", {"tag": "rolled-back"}, conn=conn)
            raise RuntimeError("the business logic fails after enqueueing")
    assert count(admin, app.schema, accounts) == 0
    assert count(admin, app.schema, "jobs") == 0

    # A job committed afterwards runs; once the table is empty, any job that
    # had existed would have run before it was deleted.
    app.enqueue("record", {"tag": "sentinel"}, conn=conn)
    conn.commit()
    with worker_thread(app):
        runs.wait_for("sentinel")
        wait_until(lambda: count(admin, app.schema, "jobs") == 0, message="the ack")
    assert runs.tags() == ["sentinel"]


def test_job_in_a_rolled_back_savepoint_is_gone_while_the_outer_transaction_commits(
        app: JobQueue, runs: Runs, conn: Conn, admin: Conn, accounts: str) -> None:
    add_account(conn, app.schema, "kept")
    kept = app.enqueue("plain", {"n": 1}, conn=conn)
    with pytest.raises(ZeroDivisionError), conn.transaction():  # a savepoint: already INTRANS
        add_account(conn, app.schema, "dropped")
        app.enqueue("plain", {"n": 2}, conn=conn)
        _ = 1 / 0
    assert conn.info.transaction_status == INTRANS
    conn.commit()
    assert count(admin, app.schema, accounts) == 1
    assert jobs_by_id(admin, app.schema) == {kept: ("plain", {"n": 1})}


def test_without_conn_jobqueue_commits_on_its_own_connection(
        app: JobQueue, runs: Runs, admin: Conn) -> None:
    one = app.enqueue("record", {"tag": "own"})
    many = app.enqueue_many([("record", {"tag": "m1"}), ("record", {"tag": "m2"})])
    # Visible at once from another connection: committed, nothing left pending.
    assert set(jobs_by_id(admin, app.schema)) == {one, *many}
    with worker_thread(app):
        runs.wait_for("own", "m1", "m2")
        wait_until(lambda: count(admin, app.schema, "jobs") == 0, message="the acks")
    assert sorted(runs.tags()) == ["m1", "m2", "own"]


def test_autocommit_connection_commits_each_enqueue(
        app: JobQueue, runs: Runs, pg_dsn: str, admin: Conn) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as auto:
        job_id = app.enqueue("plain", conn=auto)
        assert auto.info.transaction_status == IDLE
        assert set(jobs_by_id(admin, app.schema)) == {job_id}


# -- enqueue_many --------------------------------------------------------------------------------


def test_enqueue_many_is_one_round_trip(
        app: JobQueue, runs: Runs, conn: Conn, admin: Conn, accounts: str) -> None:
    # The schema probe runs once per app; pay for it before measuring.
    app.enqueue("plain", conn=conn)
    # With the transaction already open, no BEGIN goes out during the measurement.
    add_account(conn, app.schema, "bulk")
    jobs: list[tuple[str, dict[str, Any]]] = [("plain", {"i": i}) for i in range(200)]

    with wire(conn) as bulk:
        ids = app.enqueue_many(jobs, conn=conn)
    assert bulk.round_trips == 1
    assert bulk.sent("Sync") + bulk.sent("Query") == 1
    assert bulk.sent("Parse") == 1
    assert "INSERT INTO" in bulk.text
    assert len(set(ids)) == 200

    # The same instrument counts one round trip per statement: two single
    # enqueues show up as two, so "1" above is a measurement, not a default.
    with wire(conn) as singles:
        app.enqueue("plain", conn=conn)
        app.enqueue("plain", conn=conn)
    assert singles.round_trips == 2

    assert conn.info.transaction_status == INTRANS
    conn.commit()
    assert count(admin, app.schema, "jobs") == 1 + 200 + 2


def test_enqueue_many_returns_ids_in_input_order(
        app: JobQueue, runs: Runs, conn: Conn, admin: Conn) -> None:
    @app.task()
    def alpha(**_: Any) -> None: ...

    @app.task()
    def beta(**_: Any) -> None: ...

    # Interleaved tasks and refs of every kind (name, Task, function), so that
    # an id matched to the wrong row would show.
    refs: list[Any] = ["plain", alpha, beta, "alpha", beta.fn]
    names = ["plain", "alpha", "beta", "alpha", "beta"]
    jobs = [(refs[i * 7 % 5], {"i": i, "word": f"w{i}"}) for i in range(60)]
    jobs.append(("plain", None))
    expected = [(names[i * 7 % 5], {"i": i, "word": f"w{i}"}) for i in range(60)]
    expected.append(("plain", {}))

    ids = app.enqueue_many(jobs, conn=conn)
    conn.commit()
    own_ids = app.enqueue_many(jobs)  # and through jobqueue's own connection

    stored = jobs_by_id(admin, app.schema)
    assert len(stored) == 2 * len(jobs)
    assert [stored[i] for i in ids] == expected
    assert [stored[i] for i in own_ids] == expected


def test_enqueue_many_of_nothing_sends_nothing(app: JobQueue, runs: Runs, conn: Conn) -> None:
    with wire(conn) as seen:
        assert app.enqueue_many([], conn=conn) == []
    assert seen.messages() == []


def test_enqueue_many_applies_options_to_every_job(
        app: JobQueue, runs: Runs, conn: Conn, admin: Conn) -> None:
    at = datetime.now(UTC).replace(microsecond=250_000) + timedelta(hours=1)
    delayed = app.enqueue_many([("plain", {"i": 0}), ("plain", {"i": 1})], conn=conn,
                               queue="bulk", priority=7, delay=30, max_attempts=3)
    scheduled = app.enqueue_many([("plain", {"i": 2})], conn=conn, run_at=at)
    conn.commit()
    rows = {r[0]: r[1:] for r in admin.execute(sql.SQL(
        "SELECT id, queue, priority, max_attempts, run_at,"
        " extract(epoch FROM run_at - created_at)::float8 FROM {}")
        .format(sql.Identifier(app.schema, "jobs"))).fetchall()}
    for job_id in delayed:
        queue, priority, max_attempts, _, offset = rows[job_id]
        assert (queue, priority, max_attempts) == ("bulk", 7, 3)
        assert offset == pytest.approx(30, abs=1e-6)
    (job_id,) = scheduled
    # Not given: left to the worker that claims it (tests/integration/test_task_policy.py).
    assert rows[job_id][:4] == ("default", 0, None, at)


# -- what is stored --------------------------------------------------------------------------


def test_delay_run_at_priority_and_queue_are_stored(
        app: JobQueue, runs: Runs, conn: Conn, admin: Conn) -> None:
    @app.task(queue="mail", priority=4, max_attempts=2)
    def notify(**_: Any) -> None: ...

    # Not UTC on purpose: the stored instant must be the same one.
    run_at = (datetime.now(timezone(timedelta(hours=-7))) + timedelta(hours=3)) \
        .replace(microsecond=123_456)
    ids = {
        "defaults": app.enqueue("plain", conn=conn),
        "task defaults": app.enqueue(notify, conn=conn),
        "overrides": app.enqueue(notify, conn=conn, queue="urgent", priority=-3,
                                 max_attempts=9),
        "priority 0 overrides the task's": app.enqueue(notify, conn=conn, priority=0),
        "delay seconds": app.enqueue("plain", conn=conn, delay=90.5),
        "delay timedelta": app.enqueue("plain", conn=conn, delay=timedelta(minutes=2)),
        "run_at": app.enqueue("plain", conn=conn, run_at=run_at),
    }
    conn.commit()
    rows = {r[0]: r[1:] for r in admin.execute(sql.SQL(
        "SELECT id, queue, priority, max_attempts, state, attempts, run_at,"
        " extract(epoch FROM run_at - created_at)::float8,"
        " extract(epoch FROM run_at - now())::float8 FROM {}")
        .format(sql.Identifier(app.schema, "jobs"))).fetchall()}
    got = {name: rows[job_id] for name, job_id in ids.items()}

    for row in got.values():
        assert row[3:5] == ("queued", 0)  # state, attempts
    assert got["defaults"][:3] == ("default", 0, None)  # max_attempts: the worker's
    # The task's queue and priority place the job here; its max_attempts (2) is
    # applied by the worker that claims it, from the worker's own declaration.
    assert got["task defaults"][:3] == ("mail", 4, None)
    assert got["overrides"][:3] == ("urgent", -3, 9)
    assert got["priority 0 overrides the task's"][:3] == ("mail", 0, None)

    # Without a delay the job is due at once: run_at is the enqueueing
    # transaction's now(), the same instant as created_at.
    assert got["defaults"][6] == 0
    # A delay counts from the enqueueing transaction's now()...
    assert got["delay seconds"][6] == pytest.approx(90.5, abs=1e-6)
    assert got["delay timedelta"][6] == pytest.approx(120, abs=1e-6)
    # ...which is at most a few (generous, loaded-machine) seconds before this check.
    assert 60 < got["delay seconds"][7] <= 90.5
    assert 90 < got["delay timedelta"][7] <= 120
    assert got["run_at"][5] == run_at
    # (The replaced microseconds move run_at by up to a second either way.)
    assert 3 * 3600 - 60 < got["run_at"][7] < 3 * 3600 + 1


def test_claim_takes_due_jobs_and_leaves_scheduled_ones(
        app: JobQueue, runs: Runs, conn: Conn, admin: Conn) -> None:
    now = datetime.now(UTC)
    due = {
        app.enqueue("plain", conn=conn),
        app.enqueue("plain", conn=conn, run_at=now - timedelta(minutes=1)),
        app.enqueue("plain", conn=conn, delay=0),
    }
    later = {
        app.enqueue("plain", conn=conn, delay=3600),
        app.enqueue("plain", conn=conn, run_at=now + timedelta(hours=1)),
        app.enqueue("plain", conn=conn, delay=timedelta(seconds=60)),
    }
    conn.commit()
    # The worker's own claim statement, as the fetcher runs it.
    claimed = admin.execute(queries.query("claim", app.schema), ClaimRequest(
        worker_id="test-claimer", lease=30.0, limit=100, queues=["default"], ranked=False,
        oldest=False).params([100])).fetchall()
    assert {row[0] for row in claimed} == due
    left = admin.execute(sql.SQL("SELECT id, state, attempts, locked_by FROM {}")
                         .format(sql.Identifier(app.schema, "jobs"))).fetchall()
    assert {r[0]: r[1:] for r in left if r[0] in later} == \
        dict.fromkeys(later, ("queued", 0, None))


def test_worker_runs_a_delayed_job_only_once_it_is_due(
        app: JobQueue, runs: Runs, conn: Conn, admin: Conn) -> None:
    with worker_thread(app):
        app.enqueue("record", {"tag": "now"}, conn=conn)
        later = app.enqueue("record", {"tag": "later"}, conn=conn, delay=1.5)
        conn.commit()
        row = admin.execute(sql.SQL("SELECT run_at FROM {} WHERE id = %s")
                            .format(sql.Identifier(app.schema, "jobs")), [later]).fetchone()
        assert row is not None
        runs.wait_for("now", "later")
        wait_until(lambda: count(admin, app.schema, "jobs") == 0, message="the acks")
    # The database and the handler read the same clock (one machine).
    assert runs.time_of("later") >= row[0]
    assert sorted(runs.tags()) == ["later", "now"]


# -- refused before any SQL: the caller's transaction stays usable -----------------------------

def nested(levels: int) -> dict[str, Any]:
    """A payload whose dicts and lists nest ``levels`` deep (the top dict is one)."""
    inner: Any = {}
    for level in range(levels - 1):
        inner = {"d": inner} if level % 2 else [inner]
    # The top level must be a dict: a list there becomes one, at the same depth.
    return inner if isinstance(inner, dict) else {"d": inner[0]}


REFUSED: dict[str, tuple[Any, dict[str, Any]]] = {
    "set": ({"tags": {"a", "b"}}, {}),
    "datetime": ({"at": datetime(2024, 1, 1, tzinfo=UTC)}, {}),
    "NaN": ({"x": math.nan}, {}),
    "infinity": ({"x": math.inf}, {}),
    "bytes": ({"raw": b"\x01"}, {}),
    "list instead of dict": ([1, 2], {}),
    "str instead of dict": ("user=42", {}),
    "int key": ({1: "one"}, {}),
    "NUL in a value": ({"s": "a\x00b"}, {}),
    "NUL in a key": ({"k\x00": 1}, {}),
    "nested NUL": ({"d": [{"s": "\x00"}]}, {}),
    "lone surrogate": ({"s": "\ud800"}, {}),
    "nested 5,000 levels": (nested(5_000), {}),
    "nested 501 levels": (nested(501), {}),
    "64 KiB + 1 byte": ({"s": "x" * (64 * 1024 - 7)}, {}),
    "negative delay": ({}, {"delay": -1}),
    "NaN delay": ({}, {"delay": math.nan}),
    "naive run_at": ({}, {"run_at": datetime(2030, 1, 1)}),
    "run_at and delay": ({}, {"run_at": datetime(2030, 1, 1, tzinfo=UTC), "delay": 5}),
    "priority beyond smallint": ({}, {"priority": 40_000}),
    "negative max_attempts": ({}, {"max_attempts": -1}),
}


def test_args_nested_to_the_limit_are_stored_as_given(app: JobQueue, runs: Runs,
                                                      admin: Conn) -> None:
    deepest = nested(NESTING_LIMIT)
    job_id = app.enqueue("plain", deepest)
    assert jobs_by_id(admin, app.schema) == {job_id: ("plain", deepest)}


@pytest.mark.parametrize(("args", "options"), REFUSED.values(), ids=REFUSED.keys())
def test_bad_job_fails_before_any_sql_and_the_transaction_goes_on(
        args: Any, options: dict[str, Any],
        app: JobQueue, runs: Runs, conn: Conn, admin: Conn, accounts: str) -> None:
    add_account(conn, app.schema, "before")
    with wire(conn) as seen, pytest.raises(PayloadError):
        app.enqueue("plain", args, conn=conn, **options)
    assert seen.messages() == []  # not one byte went to the server
    assert conn.info.transaction_status == INTRANS

    add_account(conn, app.schema, "after")
    good = app.enqueue("plain", {"ok": True}, conn=conn)
    conn.commit()
    assert count(admin, app.schema, accounts) == 2
    assert jobs_by_id(admin, app.schema) == {good: ("plain", {"ok": True})}


def test_one_bad_job_in_a_batch_stops_the_whole_batch_before_any_sql(
        app: JobQueue, runs: Runs, conn: Conn, admin: Conn, accounts: str) -> None:
    add_account(conn, app.schema, "before")
    batch = [("plain", {"i": 0}), ("plain", {"i": {1, 2}}), ("plain", {"i": 2})]
    with wire(conn) as seen, pytest.raises(PayloadError):
        app.enqueue_many(batch, conn=conn)
    assert seen.messages() == []
    assert conn.info.transaction_status == INTRANS
    conn.commit()
    assert count(admin, app.schema, accounts) == 1
    assert count(admin, app.schema, "jobs") == 0


def test_payload_limit_is_inclusive_default_and_custom(
        app: JobQueue, runs: Runs, pg_dsn: str, conn: Conn, admin: Conn) -> None:
    # '{"s":""}' is 8 bytes: pad the string to land exactly on the limit.
    app.enqueue("plain", {"s": "x" * (64 * 1024 - 8)}, conn=conn)
    small = JobQueue(pg_dsn, schema=app.schema, payload_limit=100)
    try:
        small.task(name="plain")(lambda **_: None)
        small.enqueue("plain", {"s": "y" * 92}, conn=conn)
        with pytest.raises(PayloadError, match="101 bytes"):
            small.enqueue("plain", {"s": "y" * 93}, conn=conn)
        assert conn.info.transaction_status == INTRANS
        conn.commit()
    finally:
        small.close()
    sizes = admin.execute(sql.SQL("SELECT octet_length(args->>'s') FROM {} ORDER BY id")
                          .format(sql.Identifier(app.schema, "jobs"))).fetchall()
    assert sizes == [(64 * 1024 - 8,), (92,)]


def test_unknown_task_is_refused_when_strict_and_stored_when_not(
        app: JobQueue, runs: Runs, conn: Conn, admin: Conn, accounts: str) -> None:
    add_account(conn, app.schema, "before")
    with wire(conn) as seen:
        with pytest.raises(UnknownTaskError, match="strict=False"):
            app.enqueue("billing.charge", {"order": 1}, conn=conn)
        with pytest.raises(UnknownTaskError):
            app.enqueue_many([("plain", {}), ("billing.charge", {})], conn=conn)
    assert seen.messages() == []
    assert conn.info.transaction_status == INTRANS

    # A producer that does not import the worker's code enqueues by name.
    one = app.enqueue("billing.charge", {"order": 1}, conn=conn, strict=False)
    (two,) = app.enqueue_many([("billing.refund", {"order": 2})], conn=conn, strict=False)
    add_account(conn, app.schema, "after")
    conn.commit()
    assert count(admin, app.schema, accounts) == 2
    rows = admin.execute(sql.SQL("SELECT id, task, args, queue, max_attempts FROM {}")
                         .format(sql.Identifier(app.schema, "jobs"))).fetchall()
    # Unknown tasks take the app's defaults.
    # max_attempts is left to the worker that declares the task.
    assert sorted(rows) == [(one, "billing.charge", {"order": 1}, "default", None),
                            (two, "billing.refund", {"order": 2}, "default", None)]


@given(args=st.dictionaries(
    st.text(max_size=8),
    st.recursive(
        st.none() | st.booleans() | st.integers()
        | st.text(st.characters() | st.sampled_from(["\x00", "\ud800", "\udfff", "\\", '"'])),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
        max_leaves=12),
    max_size=5))
@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_what_encode_args_accepts_postgres_stores_and_what_it_refuses_postgres_would(
        admin: Conn, args: dict[str, Any]) -> None:
    def unstorable(value: Any) -> bool:
        if isinstance(value, str):
            return "\x00" in value or any("\ud800" <= ch <= "\udfff" for ch in value)
        if isinstance(value, list):
            return any(unstorable(v) for v in value)
        if isinstance(value, dict):
            return any(unstorable(k) or unstorable(v) for k, v in value.items())
        return False

    try:
        text = encode_args(args, 10**9)
    except PayloadError:
        assert unstorable(args)  # a refusal must have a reason Postgres would share
        return
    assert not unstorable(args)
    # Sent exactly as jobqueue sends it: text, cast to jsonb by the server.
    row = admin.execute("SELECT %s::jsonb", [text]).fetchone()
    assert row is not None
    assert row[0] == args


# -- schema not migrated ---------------------------------------------------------------------


@pytest.mark.parametrize("schema_exists", [False, True], ids=["no schema", "empty schema"])
def test_unmigrated_schema_is_reported_and_the_transaction_goes_on(
        schema_exists: bool, pg_dsn: str, schema: str, conn: Conn, admin: Conn) -> None:
    if schema_exists:
        admin.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    conn.execute("CREATE TEMP TABLE business (name text NOT NULL)")
    conn.execute("INSERT INTO business VALUES ('before')")
    app = JobQueue(pg_dsn, schema=schema)
    try:
        app.task(name="plain")(lambda **_: None)
        with pytest.raises(SchemaNotMigratedError, match="jobqueue migrate"):
            app.enqueue("plain", conn=conn)
        with pytest.raises(SchemaNotMigratedError):
            app.enqueue_many([("plain", {})], conn=conn)
        assert conn.info.transaction_status == INTRANS
        conn.execute("INSERT INTO business VALUES ('after')")
        conn.commit()
        assert conn.execute("SELECT count(*) FROM business").fetchone() == (2,)
        # Postgres may keep answering "no such table" from its catalog cache
        # within a transaction that began before the migration: start afresh.
        conn.commit()
        with pytest.raises(SchemaNotMigratedError):
            app.enqueue("plain")  # jobqueue's own connection says the same

        # The failed probe is not remembered: once migrated, the same app works.
        migrate.upgrade(pg_dsn, schema)
        job_id = app.enqueue("plain", conn=conn)
        conn.commit()
        assert set(jobs_by_id(admin, schema)) == {job_id}
    finally:
        app.close()


# -- unique_key ------------------------------------------------------------------------------


def test_unique_key_enqueued_twice_is_one_job(
        app: JobQueue, runs: Runs, conn: Conn, admin: Conn) -> None:
    first = app.enqueue("plain", {"n": 1}, conn=conn, unique_key="user-42")
    assert app.enqueue("plain", {"n": 2}, conn=conn, unique_key="user-42") == first
    assert conn.info.transaction_status == INTRANS
    conn.commit()
    assert app.enqueue("plain", {"n": 3}, conn=conn, unique_key="user-42") == first
    conn.commit()
    assert app.enqueue("plain", {"n": 4}, unique_key="user-42") == first
    other = app.enqueue("plain", {"n": 5}, conn=conn, unique_key="user-43")
    conn.commit()
    assert other != first
    # The first enqueue wins; the duplicates changed nothing.
    assert jobs_by_id(admin, app.schema) == {first: ("plain", {"n": 1}),
                                             other: ("plain", {"n": 5})}


@pytest.mark.parametrize("first_outcome", ["commit", "rollback"])
def test_unique_key_race_between_two_transactions(
        first_outcome: str, app: JobQueue, runs: Runs, pg_dsn: str, conn: Conn,
        admin: Conn) -> None:
    first = app.enqueue("plain", {"by": "first"}, conn=conn, unique_key="race")
    result: dict[str, Any] = {}

    def second() -> None:
        try:
            with psycopg.connect(pg_dsn) as other:
                result["pid"] = other.info.backend_pid
                result["id"] = app.enqueue("plain", {"by": "second"}, conn=other,
                                           unique_key="race")
                other.commit()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test thread
            result["error"] = exc

    thread = threading.Thread(target=second)
    thread.start()
    try:
        # The second INSERT must wait for the first transaction's index entry.
        wait_until(lambda: "error" in result or ("pid" in result and admin.execute(
            "SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = %s",
            [result["pid"]]).fetchone() == (True,)), message="the second enqueue to block")
        assert "id" not in result
        if first_outcome == "commit":
            conn.commit()
        else:
            conn.rollback()
    finally:
        thread.join(20)
    assert not thread.is_alive()
    if "error" in result:
        raise result["error"]
    stored = jobs_by_id(admin, app.schema)
    if first_outcome == "commit":
        # Deduplicated onto the committed job.
        assert result["id"] == first
        assert stored == {first: ("plain", {"by": "first"})}
    else:
        # The first never existed: the second must get a job of its own, or
        # the work would silently be lost.
        assert result["id"] != first
        assert stored == {result["id"]: ("plain", {"by": "second"})}
