"""Transactional enqueue through SQLAlchemy: a Core ``Connection`` and an ORM ``Session``.

The application's own SQLAlchemy transaction (``postgresql+psycopg://``) carries
the job: it exists if and only if SQLAlchemy commits, jobqueue never commits for
it, and a refused job leaves the transaction usable. The engine connects
through ``creator=`` so that any DSN works, including the embedded server's
unix-socket URI.
"""

from __future__ import annotations

import contextlib
import re
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from psycopg import pq, sql
from sqlalchemy import Engine, create_engine, insert
from sqlalchemy.engine import Connection
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from jobqueue import (
    JobQueue,
    PayloadError,
    SchemaNotMigratedError,
    UnknownTaskError,
    UnsupportedConnectionError,
)
from tests.helpers import count, wait_until, worker_thread

INTRANS = pq.TransactionStatus.INTRANS


class Base(DeclarativeBase):
    pass


class Account(Base):
    """The business row written in the same transaction as the job."""

    __tablename__ = "accounts"  # found through the connection's search_path

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str]


# -- fixtures and helpers ----------------------------------------------------------------------


class Runs:
    """Tags the ``record`` handler ran, as seen from the worker's threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tags: list[str] = []

    def add(self, tag: str) -> None:
        with self._lock:
            self._tags.append(tag)

    def tags(self) -> list[str]:
        with self._lock:
            return list(self._tags)

    def wait_for(self, *tags: str) -> None:
        wait_until(lambda: set(tags) <= set(self.tags()), 20, message=f"jobs {tags} to run")


@pytest.fixture
def runs(app: JobQueue) -> Runs:
    """Registers ``record`` (runs are recorded) and ``plain`` (only ever enqueued)."""
    runs = Runs()

    @app.task(name="record")
    def record(tag: str) -> None:
        runs.add(tag)

    @app.task()
    def plain(**_: Any) -> None: ...

    return runs


def make_engine(dsn: str, schema: str) -> Engine:
    return create_engine(
        "postgresql+psycopg://",
        creator=lambda: psycopg.connect(dsn, options=f"-c search_path={schema}"))


@pytest.fixture
def engine(pg_dsn: str, migrated: str) -> Iterator[Engine]:
    eng = make_engine(pg_dsn, migrated)
    Base.metadata.create_all(eng)
    yield eng
    eng.dispose()


@dataclass
class Caller:
    """One way an application holds a transaction with SQLAlchemy."""

    conn: Connection | Session  # what the application passes as conn=
    add: Callable[[str], None]  # write a business row in the transaction
    commit: Callable[[], None]
    rollback: Callable[[], None]
    in_transaction: Callable[[], bool]
    raw: Callable[[], psycopg.Connection[Any]]  # the psycopg connection underneath


@contextlib.contextmanager
def open_caller(kind: str, engine: Engine) -> Iterator[Caller]:
    if kind == "Connection":
        with engine.connect() as c:  # 2.0 style: autobegins, commit as you go
            def insert_row(name: str) -> None:
                c.execute(insert(Account).values(name=name))

            yield Caller(
                conn=c, add=insert_row, commit=c.commit, rollback=c.rollback,
                in_transaction=c.in_transaction, raw=lambda: c.connection.driver_connection)
    else:
        with Session(engine) as s:
            def add(name: str) -> None:
                s.add(Account(name=name))
                s.flush()  # so the row is really written inside the transaction

            yield Caller(
                conn=s, add=add, commit=s.commit, rollback=s.rollback,
                in_transaction=s.in_transaction,
                raw=lambda: s.connection().connection.driver_connection)


KINDS = ["Connection", "Session"]


def job_rows(admin: psycopg.Connection[Any], schema: str) -> dict[int, tuple[str, Any]]:
    rows = admin.execute(sql.SQL("SELECT id, task, args FROM {}")
                         .format(sql.Identifier(schema, "jobs"))).fetchall()
    return {r[0]: (r[1], r[2]) for r in rows}


@contextlib.contextmanager
def round_trips(conn: psycopg.Connection[Any]) -> Iterator[list[int]]:
    """Counts server round trips (one ReadyForQuery each) through the libpq trace."""
    result: list[int] = []
    with tempfile.TemporaryFile() as f:
        conn.pgconn.trace(f.fileno())
        conn.pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS | pq.Trace.REGRESS_MODE)
        try:
            yield result
        finally:
            conn.pgconn.untrace()
            f.seek(0)
            text = f.read().decode("utf-8", "replace")
            result.append(len(re.findall(r"^B\t\d+\tReadyForQuery", text, re.MULTILINE)))
            result.append(len(re.findall(r"^F\t", text, re.MULTILINE)))


# -- commit, rollback, and whose transaction it is ---------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_job_is_invisible_until_sqlalchemy_commits_then_runs(
        kind: str, app: JobQueue, runs: Runs, engine: Engine,
        admin: psycopg.Connection[Any]) -> None:
    with open_caller(kind, engine) as caller:
        caller.add("ada")
        job_id = app.enqueue("record", {"tag": "welcome-ada"}, conn=caller.conn)
        # Still inside the caller's transaction, as SQLAlchemy and libpq both see it.
        assert caller.in_transaction()
        assert caller.raw().info.transaction_status == INTRANS
        assert count(admin, app.schema, "accounts") == 0
        assert count(admin, app.schema, "jobs") == 0
        caller.commit()
    assert count(admin, app.schema, "accounts") == 1
    assert job_rows(admin, app.schema) == {job_id: ("record", {"tag": "welcome-ada"})}
    with worker_thread(app):
        runs.wait_for("welcome-ada")
        wait_until(lambda: count(admin, app.schema, "jobs") == 0, message="the ack")
    assert runs.tags() == ["welcome-ada"]


@pytest.mark.parametrize("kind", KINDS)
def test_rolled_back_job_never_exists_and_never_runs(
        kind: str, app: JobQueue, runs: Runs, engine: Engine,
        admin: psycopg.Connection[Any]) -> None:
    with open_caller(kind, engine) as caller:
        caller.add("bob")
        app.enqueue("record", {"tag": "rolled-back"}, conn=caller.conn)
        caller.rollback()
        assert count(admin, app.schema, "accounts") == 0
        assert count(admin, app.schema, "jobs") == 0
        # The same connection goes on: a later transaction's job does run.
        app.enqueue("record", {"tag": "sentinel"}, conn=caller.conn)
        caller.commit()
    with worker_thread(app):
        runs.wait_for("sentinel")
        # Once jobs is empty, any job that had existed would have run first.
        wait_until(lambda: count(admin, app.schema, "jobs") == 0, message="the ack")
    assert runs.tags() == ["sentinel"]


@pytest.mark.parametrize("kind", KINDS)
def test_enqueue_as_the_first_statement_is_committed_by_the_callers_commit(
        kind: str, app: JobQueue, runs: Runs, engine: Engine,
        admin: psycopg.Connection[Any]) -> None:
    # SQLAlchemy begins lazily: if enqueue ran on the DBAPI connection without
    # SQLAlchemy knowing of a transaction, commit() would do nothing and the
    # job would vanish when the connection went back to the pool.
    with open_caller(kind, engine) as caller:
        job_id = app.enqueue("plain", {"first": True}, conn=caller.conn)
        assert caller.in_transaction()
        caller.commit()
    assert job_rows(admin, app.schema) == {job_id: ("plain", {"first": True})}


@pytest.mark.parametrize("style", ["engine.begin()", "session.begin()"])
def test_exception_in_a_transaction_block_takes_the_job_with_it(
        style: str, app: JobQueue, runs: Runs, engine: Engine,
        admin: psycopg.Connection[Any]) -> None:
    with pytest.raises(LookupError):
        if style == "engine.begin()":
            with engine.begin() as c:
                c.execute(insert(Account).values(name="carol"))
                app.enqueue("plain", {"n": 1}, conn=c)
                raise LookupError("the business logic fails after enqueueing")
        else:
            with Session(engine) as s, s.begin():
                s.add(Account(name="carol"))
                app.enqueue("plain", {"n": 1}, conn=s)
                raise LookupError("the business logic fails after enqueueing")
    assert count(admin, app.schema, "accounts") == 0
    assert count(admin, app.schema, "jobs") == 0


def test_the_documented_session_example(
        app: JobQueue, runs: Runs, engine: Engine, admin: psycopg.Connection[Any]) -> None:
    with Session(engine) as session, session.begin():
        session.add(Account(name="dora"))
        job_id = app.enqueue("plain", {"user": "dora"}, conn=session, delay=60)
        assert count(admin, app.schema, "jobs") == 0
    # session.begin() committed both; the delay counts from the transaction's now().
    assert count(admin, app.schema, "accounts") == 1
    row = admin.execute(sql.SQL("SELECT task, args, extract(epoch FROM run_at - created_at)"
                                "::float8 FROM {} WHERE id = %s")
                        .format(sql.Identifier(app.schema, "jobs")), [job_id]).fetchone()
    assert row == ("plain", {"user": "dora"}, 60.0)


def test_session_joined_to_an_outer_transaction_that_rolls_back(
        app: JobQueue, runs: Runs, engine: Engine, admin: psycopg.Connection[Any]) -> None:
    # The pattern of test suites and of nested units of work: the session's
    # commit only releases a savepoint; the outer transaction decides.
    with engine.connect() as c:
        outer = c.begin()
        with Session(bind=c, join_transaction_mode="create_savepoint") as s:
            s.add(Account(name="eve"))
            app.enqueue("plain", {"n": 1}, conn=s)
            s.commit()
        assert c.in_transaction()
        assert count(admin, app.schema, "jobs") == 0
        outer.rollback()
    assert count(admin, app.schema, "accounts") == 0
    assert count(admin, app.schema, "jobs") == 0


# -- enqueue_many --------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_enqueue_many_is_one_round_trip_with_ids_in_order(
        kind: str, app: JobQueue, runs: Runs, engine: Engine,
        admin: psycopg.Connection[Any]) -> None:
    jobs = [("plain", {"i": i}) for i in range(100)]
    with open_caller(kind, engine) as caller:
        app.enqueue("plain", {"i": -1}, conn=caller.conn)  # the once-per-app schema probe
        caller.add("bulk")  # the transaction is open: no BEGIN during the measurement
        raw = caller.raw()
        with round_trips(raw) as bulk:
            ids = app.enqueue_many(jobs, conn=caller.conn)
        with round_trips(raw) as singles:
            app.enqueue("plain", {"i": 100}, conn=caller.conn)
            app.enqueue("plain", {"i": 101}, conn=caller.conn)
        assert caller.in_transaction()
        caller.commit()
    assert bulk[0] == 1  # [round trips, messages sent]
    assert singles[0] == 2  # the instrument does count every statement
    stored = job_rows(admin, app.schema)
    assert len(stored) == 103
    assert [stored[i] for i in ids] == [("plain", {"i": i}) for i in range(100)]


# -- refused jobs leave the transaction usable -------------------------------------------------

REFUSED: dict[str, tuple[str, Any, dict[str, Any]]] = {
    "set": ("plain", {"tags": {"a"}}, {}),
    "NaN": ("plain", {"x": float("nan")}, {}),
    "NUL": ("plain", {"s": "\x00"}, {}),
    "not a dict": ("plain", ["a"], {}),
    "oversize": ("plain", {"s": "x" * (64 * 1024)}, {}),
    "unknown task": ("nowhere.task", {}, {}),
}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("task", "args", "options"), REFUSED.values(), ids=REFUSED.keys())
def test_refused_job_sends_nothing_and_the_transaction_goes_on(
        kind: str, task: str, args: Any, options: dict[str, Any], app: JobQueue, runs: Runs,
        engine: Engine, admin: psycopg.Connection[Any]) -> None:
    with open_caller(kind, engine) as caller:
        caller.add("before")
        with round_trips(caller.raw()) as seen, \
                pytest.raises((PayloadError, UnknownTaskError)):
            app.enqueue(task, args, conn=caller.conn, **options)
        assert seen == [0, 0]  # no round trip, not one message sent
        assert caller.raw().info.transaction_status == INTRANS
        caller.add("after")
        good = app.enqueue("plain", {"ok": True}, conn=caller.conn)
        caller.commit()
    assert count(admin, app.schema, "accounts") == 2
    assert job_rows(admin, app.schema) == {good: ("plain", {"ok": True})}


@pytest.mark.parametrize("kind", KINDS)
def test_unknown_task_is_accepted_with_strict_false(
        kind: str, app: JobQueue, runs: Runs, engine: Engine,
        admin: psycopg.Connection[Any]) -> None:
    with open_caller(kind, engine) as caller:
        job_id = app.enqueue("billing.charge", {"order": 7}, conn=caller.conn, strict=False)
        caller.commit()
    assert job_rows(admin, app.schema) == {job_id: ("billing.charge", {"order": 7})}


@pytest.mark.parametrize("kind", KINDS)
def test_unique_key_through_sqlalchemy_is_one_job(
        kind: str, app: JobQueue, runs: Runs, engine: Engine,
        admin: psycopg.Connection[Any]) -> None:
    with open_caller(kind, engine) as caller:
        first = app.enqueue("plain", {"n": 1}, conn=caller.conn, unique_key="k")
        assert app.enqueue("plain", {"n": 2}, conn=caller.conn, unique_key="k") == first
        caller.commit()
    assert job_rows(admin, app.schema) == {first: ("plain", {"n": 1})}


# -- schema not migrated, unsupported connections --------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_unmigrated_schema_is_reported_and_the_transaction_goes_on(
        kind: str, pg_dsn: str, schema: str, admin: psycopg.Connection[Any]) -> None:
    # The business table exists; the jobqueue tables in that schema do not.
    admin.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    eng = make_engine(pg_dsn, schema)
    Base.metadata.create_all(eng)
    app = JobQueue(pg_dsn, schema=schema)
    try:
        app.task(name="plain")(lambda: None)
        with open_caller(kind, eng) as caller:
            caller.add("before")
            with pytest.raises(SchemaNotMigratedError, match="jobqueue migrate"):
                app.enqueue("plain", conn=caller.conn)
            assert caller.raw().info.transaction_status == INTRANS
            caller.add("after")
            caller.commit()
        assert count(admin, schema, "accounts") == 2
    finally:
        app.close()
        eng.dispose()


@pytest.mark.parametrize("kind", KINDS)
def test_a_connection_that_is_not_psycopg_is_refused(
        kind: str, app: JobQueue, runs: Runs, admin: psycopg.Connection[Any]) -> None:
    sqlite = create_engine("sqlite://")
    try:
        with open_caller(kind, sqlite) as caller, \
                pytest.raises(UnsupportedConnectionError, match="postgresql\\+psycopg"):
            app.enqueue("plain", conn=caller.conn)
    finally:
        sqlite.dispose()
    assert count(admin, app.schema, "jobs") == 0
