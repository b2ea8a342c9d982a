"""Migrations: SQL files are the source of truth, Alembic applies them.

jobqueue keeps its own Alembic version table (``jobqueue_alembic_version``,
inside the jobqueue schema), so its history lives beside the host
application's ``alembic_version`` without touching it. Users with their own
migration tool take the SQL from :func:`sql_script` (``jobqueue migrate --sql``).
"""

from __future__ import annotations

import io
import threading
from pathlib import Path
from typing import Any

import psycopg

from jobqueue.db.statement import Procedure, scalar
from jobqueue.db.store import database_error, run_sync
from jobqueue.errors import ConfigError
from jobqueue.protocol import advisory_key
from jobqueue.sql import schema_revision_text

VERSION_TABLE = "jobqueue_alembic_version"
def migrate_lock_key(schema: str) -> int:
    """The advisory lock that serialises concurrent `jobqueue migrate` runs on one
    schema (say, every worker of a fleet migrating on deploy): the second waits,
    then finds nothing left to do. Per schema, so unrelated schemas never wait."""
    return advisory_key(schema, "migrate")
# Alembic keeps the running command in module globals (alembic.context, alembic.op):
# two threads migrating at once would run each other's env.py on each other's
# connection and deadlock while holding the advisory lock. One command at a time.
_ALEMBIC_LOCK = threading.Lock()


def migrations_dir() -> Path:
    """The Alembic environment: inside the installed wheel, or at the repo top."""
    package = Path(__file__).resolve().parent.parent
    for candidate in (package / "migrations", package.parent / "migrations"):
        if (candidate / "env.py").is_file():
            return candidate
    raise ConfigError("the jobqueue migrations folder is missing from this installation")


def _config(schema: str, output: Any = None) -> Any:
    from alembic.config import Config

    cfg = Config(output_buffer=output) if output is not None else Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    cfg.attributes["jobqueue_schema"] = schema
    return cfg


def _engine(dsn: str) -> Any:
    from sqlalchemy import create_engine
    from sqlalchemy.pool import NullPool

    # creator= passes the libpq DSN as it is (URI or key=value, sockets
    # included), with no lossy conversion into a SQLAlchemy URL.
    return create_engine("postgresql+psycopg://", creator=lambda: psycopg.connect(dsn),
                         poolclass=NullPool)


def upgrade(dsn: str, schema: str, revision: str = "head") -> None:
    """Apply migrations up to ``revision``; a no-op when already there."""
    from alembic import command
    from sqlalchemy.exc import DBAPIError

    cfg = _config(schema)
    engine = _engine(dsn)
    try:
        with engine.connect() as connection:
            cfg.attributes["connection"] = connection
            with _ALEMBIC_LOCK:
                command.upgrade(cfg, revision)
    except psycopg.OperationalError as exc:
        raise database_error(exc) from None
    except DBAPIError as exc:
        # SQLAlchemy wraps the driver's error when the first connect fails.
        if not isinstance(exc.orig, psycopg.OperationalError):
            raise
        raise database_error(exc.orig) from None
    finally:
        engine.dispose()


def sql_script(schema: str, revision: str = "head") -> str:
    """The SQL that :func:`upgrade` would run on an empty database."""
    from alembic import command

    buffer = io.StringIO()
    cfg = _config(schema, output=buffer)
    with _ALEMBIC_LOCK:
        command.upgrade(cfg, revision, sql=True)
    return buffer.getvalue()


def revision(schema: str) -> Procedure[str | None]:
    """The applied revision in ``schema``, or None if jobqueue was never migrated there."""
    table = psycopg.sql.Identifier(schema, VERSION_TABLE).as_string(None)
    if not (yield scalar("version_table_probe", {"table": table})):
        return None
    found = yield scalar("schema_revision")
    return None if found is None else str(found)


def current_revision(conn: psycopg.Connection[Any], schema: str) -> str | None:
    """:func:`revision` on ``conn``."""
    return run_sync(conn, schema, revision(schema))


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(_config("jobqueue")).get_current_head()
    if head is None:
        raise ConfigError("the jobqueue migrations have no head revision")
    return head


def run_revision(name: str) -> None:
    """Run the SQL file ``sql/schema/<name>.sql`` from inside an Alembic revision,
    for the schema the migration was started for (``config.attributes``).

    Online, the file goes to the driver as one simple-protocol query (several
    statements, no parameters); offline (``--sql``) Alembic prints it.
    """
    from alembic import context, op

    text = schema_revision_text(name, str(context.config.attributes["jobqueue_schema"]))
    if context.is_offline_mode():
        op.execute(text.rstrip().rstrip(";"))  # Alembic adds its own terminator
        return
    raw = op.get_bind().connection.driver_connection
    assert isinstance(raw, psycopg.Connection)
    raw.execute(text.encode())  # bytes: psycopg sends it unparsed, without params
