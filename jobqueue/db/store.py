"""The Store: the only code that executes SQL.

Procedures (:mod:`jobqueue.db.statement`) go in, typed rows come out, and every
psycopg error leaves as a :class:`~jobqueue.DatabaseError` with one readable
line, from here and nowhere else. :class:`Store` is the sync face,
:class:`AsyncStore` the async one; the two share everything but the few
lines that run a step, so they cannot drift.

Either face runs a procedure on a connection the caller passes (psycopg,
SQLAlchemy: the caller's transaction, never committed here) or on one of its
own pool (committed when the procedure ends). The first use checks, without
any statement that could fail, that the schema is migrated: a failed
statement would abort a caller's transaction and take their writes with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import select
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar, overload

import psycopg
from psycopg import pq
from psycopg_pool import AsyncConnectionPool, ConnectionPool, PoolTimeout

from jobqueue import embedded, sql
from jobqueue.config import Settings, migrate_hint
from jobqueue.db.drivers import async_connection, sync_connection
from jobqueue.db.statement import (
    InPipeline,
    Op,
    Pipeline,
    Procedure,
    Step,
    Transaction,
    listen,
    scalar,
    single,
)
from jobqueue.errors import DatabaseError, PrivilegeError, SchemaNotMigratedError
from jobqueue.log import get_logger

T = TypeVar("T")


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


GRANT_HINT = ("`jobqueue migrate --grant-producer ROLE` (enqueue), `--grant-worker ROLE` or "
              "`--grant-results ROLE` (app.job, app.result) grants what jobqueue needs")


def database_error(exc: psycopg.Error) -> DatabaseError:
    """The jobqueue error for a psycopg one: one line, the real reason."""
    if isinstance(exc, psycopg.errors.InsufficientPrivilege):
        return PrivilegeError(f"database error: {first_line(exc)}: {GRANT_HINT}")
    if isinstance(exc, psycopg.OperationalError):
        return DatabaseError(f"database unavailable: {first_line(exc)}")
    return DatabaseError(f"database error: {first_line(exc)}")


def resolve_dsn(settings: Settings) -> str:
    """The DSN to connect to; resolving the default starts the embedded Postgres."""
    return settings.dsn if settings.dsn is not None else embedded.dsn()


@dataclass(frozen=True)
class PoolOptions:
    """How a Store's own pool connects. The producer's pool is the default."""

    name: str = "jobqueue-producer"
    min_size: int = 1
    max_size: int = 4
    # Autocommit: a single-job enqueue is one statement (insert and notify
    # together), atomic on its own; in a transaction it would cost a BEGIN and
    # a COMMIT round trip more (measured: under half the rate of a raw
    # autocommit INSERT). Procedures of several writes wrap them in a Transaction.
    autocommit: bool = True
    #: How the pool's sessions show in pg_stat_activity (unless the DSN names them).
    application_name: str | None = "jobqueue-producer"
    #: Session settings every new connection gets (see worker connections).
    settings: tuple[str, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)

    def connect_kwargs(self, settings: Settings) -> dict[str, Any]:
        out: dict[str, Any] = {**session_kwargs(settings), **self.kwargs}
        if self.autocommit:
            out["autocommit"] = True
        if self.application_name is not None:
            out["fallback_application_name"] = self.application_name
        return out


def session_kwargs(settings: Settings) -> dict[str, Any]:
    """What every connection jobqueue opens itself is given."""
    out: dict[str, Any] = {"connect_timeout": settings.connect_timeout_arg}
    if settings.pooled:
        # A prepared statement lives in one server session; behind a
        # transaction pooler the next execution may land on another, which
        # has never seen it ("prepared statement _pg3_0 does not exist") or
        # has another client's of that name ("already exists").
        out["prepare_threshold"] = None
    return out


def check_idle(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> None:
    """The pools' check before lending a connection: refuse one the server has closed.

    An idle connection has nothing to read. When its socket is readable, the
    server ended the session while it sat in the pool (a restart, a terminated
    backend, an idle timeout) and sent its goodbye or closed the socket: the
    first statement on it would fail. A poll with no timeout tells without the
    round trip that a ``SELECT 1`` check would add to every enqueue (measured:
    half the rate of a single-job enqueue on its own connection).
    """
    if not conn.closed and not conn.broken and not _readable(conn):
        return
    get_logger("jobqueue.db").info("db.connection_closed_while_idle",
                                   backend_pid=conn.pgconn.backend_pid,
                                   note="the pool opens another")
    # Closed here, so that the pool discards it (and opens another) rather than
    # lending the same dead connection again.
    conn.pgconn.finish()
    raise psycopg.OperationalError("the server closed the connection while it was idle")


async def acheck_idle(conn: psycopg.AsyncConnection[Any]) -> None:
    check_idle(conn)


def _readable(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> bool:
    readable, _, _ = select.select([conn.pgconn.socket], [], [], 0)
    return bool(readable)


def probe_schema(schema: str) -> Procedure[None]:
    table = psycopg.sql.Identifier(schema, "jobs").as_string(None)
    # The probe never raises (see schema_probe), so it cannot poison a caller's
    # transaction.
    state = yield scalar("schema_probe", {"table": table, "schema": schema})
    if state == "no_usage":
        raise PrivilegeError(f"permission denied for schema {schema!r}: {GRANT_HINT}")
    if state != "ok":
        raise SchemaNotMigratedError(f"schema {schema!r} is not migrated: run "
                                     f"{migrate_hint(schema)}")


# -- running steps: the only lines that differ between the faces ---------------------------


def _query(op: Op, schema: str) -> psycopg.sql.Composed:
    if op.idents:
        return sql.compose(op.name, schema, **dict(op.idents))
    return sql.query(op.name, schema)


def _advance(procedure: Procedure[Any], result: Any) -> tuple[bool, Any]:
    """Send ``result`` in: (False, the next step), or (True, the procedure's value)."""
    try:
        return False, procedure.send(result)
    except StopIteration as stop:
        return True, stop.value


def _owns_transaction(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> bool:
    """True where a Transaction step must not open a block of its own.

    On a caller's connection outside autocommit with no transaction begun yet,
    psycopg's ``transaction()`` would BEGIN and then COMMIT the caller's
    transaction: jobqueue never commits for the caller. Its first statement
    begins the caller's transaction instead, which makes the steps atomic
    with the caller's writes. (In a begun transaction the block is a savepoint;
    in autocommit, a transaction of its own.)
    """
    return (not conn.autocommit
            and conn.info.transaction_status == pq.TransactionStatus.IDLE)


def run_sync(conn: psycopg.Connection[Any], schema: str, procedure: Procedure[T],
             prepare: bool | None = None) -> T:
    """Run ``procedure`` on ``conn``: each yielded step is executed, its result sent back.

    ``prepare=False`` never prepares a statement, whatever the connection's
    ``prepare_threshold`` (a caller's connection behind a transaction pooler).
    """
    done, value = _advance(procedure, None)
    while not done:
        done, value = _advance(procedure, _step_sync(conn, schema, value, prepare))
    return value  # type: ignore[no-any-return]


def _step_sync(conn: psycopg.Connection[Any], schema: str, step: Step,
               prepare: bool | None = None) -> Any:
    if isinstance(step, Op):
        with conn.cursor(row_factory=step.row_factory()) as cur:
            cur.execute(_query(step, schema), step.params, prepare=prepare)
            return step.result(cur.fetchall() if cur.description else [], cur.rowcount)
    if isinstance(step, Pipeline):
        with conn.pipeline():
            cursors = [conn.cursor(row_factory=op.row_factory()) for op in step.ops]
            for op, cur in zip(step.ops, cursors, strict=True):
                cur.execute(_query(op, schema), op.params, prepare=prepare)
        return [op.result(cur.fetchall() if cur.description else [], cur.rowcount)
                for op, cur in zip(step.ops, cursors, strict=True)]
    if isinstance(step, Transaction):
        if _owns_transaction(conn):
            return run_sync(conn, schema, step.procedure, prepare)  # the caller's transaction
        with conn.transaction():
            return run_sync(conn, schema, step.procedure, prepare)
    if isinstance(step, InPipeline):
        return conn.pgconn.pipeline_status != pq.PipelineStatus.OFF
    with conn.cursor() as cur, cur.copy(sql.query(step.name, schema)) as copy:
        for chunk in step.chunks:
            copy.write(chunk)
    return None


async def run_async(conn: psycopg.AsyncConnection[Any], schema: str,
                    procedure: Procedure[T], prepare: bool | None = None) -> T:
    """:func:`run_sync` on an async connection."""
    done, value = _advance(procedure, None)
    while not done:
        done, value = _advance(procedure, await _step_async(conn, schema, value, prepare))
    return value  # type: ignore[no-any-return]


async def _step_async(conn: psycopg.AsyncConnection[Any], schema: str, step: Step,
                      prepare: bool | None = None) -> Any:
    if isinstance(step, Op):
        async with conn.cursor(row_factory=step.row_factory()) as cur:
            await cur.execute(_query(step, schema), step.params, prepare=prepare)
            return step.result(await cur.fetchall() if cur.description else [], cur.rowcount)
    if isinstance(step, Pipeline):
        async with conn.pipeline():
            cursors = [conn.cursor(row_factory=op.row_factory()) for op in step.ops]
            for op, cur in zip(step.ops, cursors, strict=True):
                await cur.execute(_query(op, schema), op.params, prepare=prepare)
        return [op.result(await cur.fetchall() if cur.description else [], cur.rowcount)
                for op, cur in zip(step.ops, cursors, strict=True)]
    if isinstance(step, Transaction):
        if _owns_transaction(conn):
            return await run_async(conn, schema, step.procedure, prepare)  # caller's transaction
        async with conn.transaction():
            return await run_async(conn, schema, step.procedure, prepare)
    if isinstance(step, InPipeline):
        return conn.pgconn.pipeline_status != pq.PipelineStatus.OFF
    async with conn.cursor() as cur, cur.copy(sql.query(step.name, schema)) as copy:
        for chunk in step.chunks:
            await copy.write(chunk)
    return None


# -- the faces -----------------------------------------------------------------------------


class _Base:
    def __init__(self, settings: Settings, *, options: PoolOptions | None = None,
                 probe: bool = True) -> None:
        self.settings = settings
        self.options = options or PoolOptions()
        # Check the schema once, on first use (False: the caller checks it otherwise).
        self._schema_ok = not probe
        # Behind a transaction pooler nothing is prepared, not even on a caller's
        # connection that would (see session_kwargs); None: psycopg decides.
        self._prepare = False if settings.pooled else None
        self._lock = threading.Lock()

    @property
    def schema(self) -> str:
        return self.settings.schema

    @property
    def dsn(self) -> str:
        return resolve_dsn(self.settings)

    @contextlib.contextmanager
    def errors(self) -> Iterator[None]:
        """psycopg errors in, jobqueue errors out: the one place they are translated."""
        try:
            yield
        except PoolTimeout as exc:  # before its base class, OperationalError
            raise self._pool_timeout(exc) from None
        except psycopg.Error as exc:
            raise database_error(exc) from exc

    def _pool_timeout(self, exc: Exception) -> DatabaseError:
        """The pool only says it timed out; one direct attempt tells the person why."""
        try:
            psycopg.connect(self.dsn, connect_timeout=self.settings.connect_timeout_arg).close()
        except psycopg.OperationalError as direct:
            return database_error(direct)
        return DatabaseError(f"database unavailable: no pooled connection within "
                             f"{self.settings.connect_timeout:g}s ({exc})")

    def _probed(self, procedure: Procedure[T]) -> Procedure[T]:
        if not self._schema_ok:
            yield from probe_schema(self.schema)
            self._schema_ok = True
        return (yield from procedure)


class Store(_Base):
    """The sync face: producers, admin operations, the CLI."""

    def __init__(self, settings: Settings, *, options: PoolOptions | None = None,
                 probe: bool = True) -> None:
        super().__init__(settings, options=options, probe=probe)
        self._pool: ConnectionPool[Any] | None = None

    def pool(self) -> ConnectionPool[Any]:
        with self._lock:
            if self._pool is None:
                o = self.options
                self._pool = ConnectionPool(
                    self.dsn, min_size=o.min_size, max_size=o.max_size, open=False,
                    timeout=self.settings.connect_timeout, kwargs=o.connect_kwargs(self.settings),
                    check=check_idle,
                    # Connect on demand: after an outage the default (retry one slot
                    # with backoff growing to minutes) keeps the pool empty long after
                    # the database is back, and every enqueue times out meanwhile.
                    reconnect_timeout=0, name=o.name)
                self._pool.open(wait=False)
            return self._pool

    @overload
    def run(self, work: Op, conn: Any = None) -> Any: ...

    @overload
    def run(self, work: Procedure[T], conn: Any = None) -> T: ...

    def run(self, work: Op | Procedure[T], conn: Any = None) -> Any:
        """Run a procedure, or one statement, on ``conn`` (the caller's transaction) or
        on a pooled connection (committed at the end)."""
        with self.errors():
            if conn is not None:
                return self._on(sync_connection(conn), work)
            with self.pool().connection() as own:
                return self._on(own, work)

    def _on(self, conn: psycopg.Connection[Any], work: Op | Procedure[T]) -> Any:
        if isinstance(work, Op) and self._schema_ok:
            return _step_sync(conn, self.schema, work, self._prepare)  # no procedure to drive
        return run_sync(conn, self.schema, self._probed(as_procedure(work)), self._prepare)

    @contextlib.contextmanager
    def borrow(self) -> Iterator[psycopg.Connection[Any]]:
        """A connection of the pool for a transaction that :meth:`commit` ends; rolled
        back if the block ends without it (a transactional handler's connection).

        What the block raises is not translated: it is the handler's.
        """
        with self.errors():
            pool = self.pool()
            conn = pool.getconn()
        try:
            yield conn
        finally:
            _end(conn)
            pool.putconn(conn)

    def commit(self, conn: psycopg.Connection[Any], work: Procedure[T]) -> T:
        """Run ``work`` on a borrowed connection and commit it all."""
        with self.errors():
            value = run_sync(conn, self.schema, work, self._prepare)
            conn.commit()
        return value

    def connect(self, dsn: str | None = None, **kwargs: Any) -> psycopg.Connection[Any]:
        """A new, unpooled connection, to ``dsn`` if given (the caller closes it)."""
        with self.errors():
            return psycopg.connect(dsn or self.dsn, **{**session_kwargs(self.settings), **kwargs})

    @contextlib.contextmanager
    def listening(self, channels: list[str],
                  ) -> Iterator[Callable[[float], list[tuple[str, str]]]]:
        """LISTEN on ``channels`` (a session of its own, the listen DSN if set): yields
        ``wait(seconds)``, the (channel, payload) of what arrived within that time (at
        least one, unless the time ran out)."""
        conn = self.connect(self.settings.listen_dsn, autocommit=True)
        try:
            with self.errors():
                for channel in channels:
                    _step_sync(conn, self.schema, listen(channel))

            def wait(seconds: float) -> list[tuple[str, str]]:
                with self.errors():
                    return [(n.channel, n.payload)
                            for n in conn.notifies(timeout=max(0.0, seconds), stop_after=1)]
            yield wait
        finally:
            conn.close()

    def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()


class AsyncStore(_Base):
    """The async face: async producers and the worker."""

    def __init__(self, settings: Settings, *, options: PoolOptions | None = None,
                 probe: bool = True) -> None:
        super().__init__(settings, options=options, probe=probe)
        self._pool: AsyncConnectionPool[Any] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def pool(self, wait: bool = False) -> AsyncConnectionPool[Any]:
        loop = asyncio.get_running_loop()
        if self._pool is not None and self._loop is not loop:
            # An asyncio pool belongs to the loop that opened it (each
            # asyncio.run() makes a new one): open a fresh pool for this loop.
            self._pool = None
        if self._pool is None:
            o = self.options
            # Session settings need a session: none behind a transaction pooler
            # (worker_pool sets them per transaction there instead).
            configure = (_configure(self.schema, o.settings)
                         if o.settings and not self.settings.pooled else None)
            pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
                self.dsn, min_size=o.min_size, max_size=o.max_size, open=False,
                timeout=self.settings.connect_timeout, kwargs=o.connect_kwargs(self.settings),
                check=acheck_idle,
                configure=configure,
                reconnect_timeout=0, name=o.name)  # on demand: see Store.pool
            self._pool, self._loop = pool, loop
            with self.errors():
                await pool.open(wait=wait, timeout=self.settings.connect_timeout)
        return self._pool

    @overload
    async def run(self, work: Op, conn: Any = None) -> Any: ...

    @overload
    async def run(self, work: Procedure[T], conn: Any = None) -> T: ...

    async def run(self, work: Op | Procedure[T], conn: Any = None) -> Any:
        """:meth:`Store.run`, awaited."""
        with self.errors():
            if conn is not None:
                return await self._on(await async_connection(conn), work)
            pool = await self.pool()
            async with pool.connection() as own:
                return await self._on(own, work)

    async def _on(self, conn: psycopg.AsyncConnection[Any], work: Op | Procedure[T]) -> Any:
        if isinstance(work, Op) and self._schema_ok:
            return await _step_async(conn, self.schema, work, self._prepare)  # no procedure
        return await run_async(conn, self.schema, self._probed(as_procedure(work)),
                               self._prepare)

    @contextlib.asynccontextmanager
    async def borrow(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """:meth:`Store.borrow`, async."""
        with self.errors():
            pool = await self.pool()
            conn = await pool.getconn()
        try:
            yield conn
        finally:
            await _aend(conn)
            await pool.putconn(conn)

    async def commit(self, conn: psycopg.AsyncConnection[Any], work: Procedure[T]) -> T:
        """:meth:`Store.commit`, async."""
        with self.errors():
            value = await run_async(conn, self.schema, work, self._prepare)
            await conn.commit()
        return value

    @contextlib.asynccontextmanager
    async def listening(self, channels: list[str],
                        ) -> AsyncIterator[Callable[[float], Awaitable[list[tuple[str, str]]]]]:
        """:meth:`Store.listening`, async."""
        conn = await self.connect(self.settings.listen_dsn, autocommit=True)
        try:
            with self.errors():
                for channel in channels:
                    await _step_async(conn, self.schema, listen(channel))

            async def wait(seconds: float) -> list[tuple[str, str]]:
                with self.errors():
                    return [(n.channel, n.payload)
                            async for n in conn.notifies(timeout=max(0.0, seconds),
                                                         stop_after=1)]
            yield wait
        finally:
            await conn.close()

    async def connect(self, dsn: str | None = None, **kwargs: Any) -> psycopg.AsyncConnection[Any]:
        """A new, unpooled connection, to ``dsn`` if given (the caller closes it)."""
        with self.errors():
            return await psycopg.AsyncConnection.connect(
                dsn or self.dsn, **{**session_kwargs(self.settings), **kwargs})

    async def aclose(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    def close(self) -> None:
        """Close from sync code: only possible once the pool's loop has ended."""
        pool, loop = self._pool, self._loop
        self._pool = self._loop = None
        if pool is None or loop is None or loop.is_closed():
            # Its loop is gone (an asyncio.run() that ended): the pool cannot
            # be closed from another loop; its connections go with it.
            return
        if loop.is_running():
            self._pool, self._loop = pool, loop
            raise RuntimeError("use `await app.aclose()` inside an event loop")
        loop.run_until_complete(pool.close())


def _end(conn: psycopg.Connection[Any]) -> None:
    """Roll back what a borrowed connection left open (the pool would, with a warning)."""
    if not conn.closed and conn.info.transaction_status != pq.TransactionStatus.IDLE:
        with contextlib.suppress(psycopg.Error):
            conn.rollback()


async def _aend(conn: psycopg.AsyncConnection[Any]) -> None:
    if not conn.closed and conn.info.transaction_status != pq.TransactionStatus.IDLE:
        with contextlib.suppress(psycopg.Error):
            await conn.rollback()


def as_procedure(work: Op | Procedure[T]) -> Procedure[Any]:
    return single(work) if isinstance(work, Op) else work


def _configure(schema: str, statements: tuple[str, ...],
               ) -> Callable[[psycopg.AsyncConnection[Any]], Any]:
    """The pool's ``configure``: run the named session settings on each new connection."""
    async def configure(conn: psycopg.AsyncConnection[Any]) -> None:
        for name in statements:
            await conn.execute(sql.query(name, schema))
    return configure
