"""Turn whatever connection the caller holds into the psycopg connection under it.

Transactional enqueue means running our INSERT on the caller's own connection,
inside the caller's open transaction, and never committing it. psycopg
connections are used as they are; SQLAlchemy connections and sessions (psycopg
dialect) are unwrapped to the DBAPI connection they are using right now, which
is inside the transaction SQLAlchemy began.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import Any

import psycopg

from jobqueue.errors import UnsupportedConnectionError

_SYNC_KINDS = "psycopg.Connection, SQLAlchemy Connection or Session (psycopg dialect)"
_ASYNC_KINDS = (
    "psycopg.AsyncConnection, SQLAlchemy AsyncConnection or AsyncSession (psycopg dialect)"
)


def _unsupported(conn: Any, kinds: str) -> UnsupportedConnectionError:
    return UnsupportedConnectionError(
        f"cannot enqueue through a {type(conn).__module__}.{type(conn).__qualname__}; "
        f"pass a {kinds}"
    )


def sync_connection(conn: Any) -> psycopg.Connection[Any]:
    """The psycopg connection behind a sync ``conn``."""
    if isinstance(conn, psycopg.Connection):
        return conn
    if isinstance(conn, psycopg.AsyncConnection):
        raise UnsupportedConnectionError(
            "an AsyncConnection needs enqueue_async(), not enqueue()"
        )
    try:
        from sqlalchemy.engine import Connection as SAConnection
        from sqlalchemy.orm import Session
    except ImportError:  # pragma: no cover - SQLAlchemy is a dependency
        raise _unsupported(conn, _SYNC_KINDS) from None
    if isinstance(conn, Session):
        # Session.connection() joins (or autobegins) the session's transaction.
        conn = conn.connection()
    if isinstance(conn, SAConnection):
        raw = conn.connection.driver_connection
        if isinstance(raw, psycopg.Connection):
            if not conn.in_transaction():
                # SQLAlchemy begins lazily, at its first execute: begin now, or the
                # caller's commit() would find no transaction and silently drop the job.
                conn.begin()
            return raw
        raise _unsupported(raw, _SYNC_KINDS + " - use a postgresql+psycopg:// URL")
    raise _unsupported(conn, _SYNC_KINDS)


async def async_connection(conn: Any) -> psycopg.AsyncConnection[Any]:
    """The psycopg async connection behind an async ``conn``."""
    if isinstance(conn, psycopg.AsyncConnection):
        return conn
    if isinstance(conn, psycopg.Connection):
        raise UnsupportedConnectionError("a sync Connection needs enqueue(), not enqueue_async()")
    try:
        from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
    except ImportError:  # pragma: no cover
        raise _unsupported(conn, _ASYNC_KINDS) from None
    if isinstance(conn, AsyncSession):
        conn = await conn.connection()
    if isinstance(conn, AsyncConnection):
        pooled = await conn.get_raw_connection()
        raw = pooled.driver_connection
        if isinstance(raw, psycopg.AsyncConnection):
            if not conn.in_transaction():
                await conn.begin()  # as for the sync Connection: commit() must see it
            return raw
        raise _unsupported(raw, _ASYNC_KINDS + " - use a postgresql+psycopg:// URL")
    raise _unsupported(conn, _ASYNC_KINDS)


# -- the other way round: SQLAlchemy sessions over a transactional job's connection ----------

# The connection the engines below hand out while a session is being bound.
_lent: ContextVar[Any] = ContextVar("jobqueue_lent_connection")


def _keep(dbapi_connection: Any) -> None:
    """The engines' ``do_close``: the connection is the job's, SQLAlchemy never closes it."""


async def _lent_async() -> Any:
    return _lent.get()


class OrmSessions:
    """SQLAlchemy Sessions bound to a transactional job's psycopg connection.

    Each session joins the job's transaction in ``create_savepoint`` mode, so
    its ``commit()`` only releases a savepoint: the job's transaction commits
    with the ack or not at all. One engine per face serves every job: its
    creator returns the job's own connection, its pool never resets or closes
    it. The returned closer must run before the connection goes back to its pool.
    """

    def __init__(self) -> None:
        self._sync: Any = None
        self._async: Any = None

    def bind(self, conn: psycopg.Connection[Any]) -> tuple[Any, Callable[[], None]]:
        from sqlalchemy import create_engine
        from sqlalchemy.orm import Session
        from sqlalchemy.pool import NullPool

        if self._sync is None:
            engine = create_engine("postgresql+psycopg://", creator=_lent.get, poolclass=NullPool,
                                   pool_reset_on_return=None)
            engine.dialect.do_close = _keep  # type: ignore[method-assign]
            self._sync = engine
        token = _lent.set(conn)
        try:
            sa = self._sync.connect()
        finally:
            _lent.reset(token)
        sa.begin()
        session = Session(bind=sa, join_transaction_mode="create_savepoint")

        def close() -> None:
            session.close()
            sa.close()
        return session, close

    async def abind(self, conn: psycopg.AsyncConnection[Any],
                    ) -> tuple[Any, Callable[[], Awaitable[None]]]:
        from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
        from sqlalchemy.pool import NullPool

        if self._async is None:
            engine = create_async_engine("postgresql+psycopg://", async_creator=_lent_async,
                                         poolclass=NullPool, pool_reset_on_return=None)
            engine.sync_engine.dialect.do_close = _keep  # type: ignore[method-assign]
            self._async = engine
        token = _lent.set(conn)
        try:
            sa = await self._async.connect()
        finally:
            _lent.reset(token)
        await sa.begin()
        session = AsyncSession(bind=sa, join_transaction_mode="create_savepoint")

        async def close() -> None:
            await session.close()
            await sa.close()
        return session, close
