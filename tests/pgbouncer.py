"""A real PgBouncer in transaction mode in front of the test database.

Started once per test session on a free port, from the ``pgbouncer`` binary
(Debian's package; ``.ci/run`` installs it). PgBouncer refuses to run as root,
so under root it runs as the ``postgres`` user (else ``nobody``), or as the owner of the
upstream's Unix socket directory (the embedded Postgres'). Without the
binary the tests that need it are skipped, except where
``JOBQUEUE_REQUIRE_PGBOUNCER=1`` (CI) makes that a failure.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import psycopg.conninfo
import pytest


def binary() -> str | None:
    return shutil.which("pgbouncer") or next(
        (p for p in ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer") if os.path.exists(p)), None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run_as(host: str) -> pwd.struct_passwd | None:
    if os.geteuid() != 0:
        return None
    if host.startswith("/"):
        # A Unix socket directory (the embedded Postgres' data directory, mode
        # 0700): only its owner may connect through it.
        owner = os.stat(host).st_uid
        if owner != 0:
            return pwd.getpwuid(owner)
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise RuntimeError("running as root and neither 'postgres' nor 'nobody' exists")


@contextmanager
def running(upstream_dsn: str) -> Iterator[str]:
    """PgBouncer (pool_mode = transaction) in front of ``upstream_dsn``; yields its DSN."""
    exe = binary()
    if exe is None:
        if os.environ.get("JOBQUEUE_REQUIRE_PGBOUNCER") == "1":
            pytest.fail("pgbouncer is not installed (apt-get install -y pgbouncer)")
        pytest.skip("pgbouncer is not installed (apt-get install -y pgbouncer)")
    params = psycopg.conninfo.conninfo_to_dict(upstream_dsn)
    user = str(params.get("user") or "postgres")
    dbname = str(params.get("dbname") or user)
    host = str(params.get("host") or "127.0.0.1")
    if host in ("localhost", ""):
        host = "127.0.0.1"  # (a path, a Unix socket directory, stays as it is)
    upstream = f"host={host} port={params.get('port') or 5432} dbname={dbname}"
    if params.get("password"):
        upstream += f" password={params['password']}"
    port = _free_port()
    home = Path(tempfile.mkdtemp(prefix="jobqueue-pgbouncer-"))
    (home / "users.txt").write_text(f'"{user}" ""\n')
    (home / "pgbouncer.ini").write_text(f"""\
[databases]
{dbname} = {upstream}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {home / 'users.txt'}
pool_mode = transaction
default_pool_size = 20
max_client_conn = 400
logfile = {home / 'pgbouncer.log'}
pidfile = {home / 'pgbouncer.pid'}
""")
    account = _run_as(host)
    if account is not None:
        os.chown(home, account.pw_uid, account.pw_gid)
        for f in home.iterdir():
            os.chown(f, account.pw_uid, account.pw_gid)
    proc = subprocess.Popen(
        [exe, str(home / "pgbouncer.ini")], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        user=account.pw_uid if account else None, group=account.pw_gid if account else None)
    dsn = psycopg.conninfo.make_conninfo(upstream_dsn, host="127.0.0.1", port=str(port))
    try:
        _wait(dsn, proc, home)
        yield dsn
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(home, ignore_errors=True)


def _wait(dsn: str, proc: subprocess.Popen[bytes], home: Path) -> None:
    deadline = time.monotonic() + 15
    while True:
        if proc.poll() is not None:
            err = proc.stderr.read().decode() if proc.stderr else ""
            log = (home / "pgbouncer.log").read_text() if (home / "pgbouncer.log").exists() else ""
            raise RuntimeError(f"pgbouncer exited with {proc.returncode}: {err} {log}")
        try:
            with psycopg.connect(dsn, connect_timeout=2) as conn:
                conn.execute("SELECT 1")
            return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
