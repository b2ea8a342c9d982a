"""Settings: where the database is, which schema, and the defaults for jobs.

The DSN comes from the argument, else ``$JOBQUEUE_DSN``, else the embedded
Postgres (started lazily, the first time a connection is needed). The schema
comes from the argument, else ``$JOBQUEUE_SCHEMA``, else ``jobqueue``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

import psycopg.conninfo

from jobqueue.errors import ConfigError

DEFAULT_SCHEMA = "jobqueue"
DEFAULT_QUEUE = "default"
DEFAULT_MAX_ATTEMPTS = 5
DEFAULT_PAYLOAD_LIMIT = 64 * 1024

_SCHEMA_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


@dataclass(frozen=True)
class Settings:
    """Resolved settings of one :class:`jobqueue.JobQueue`."""

    dsn: str | None
    schema: str = DEFAULT_SCHEMA
    payload_limit: int = DEFAULT_PAYLOAD_LIMIT
    connect_timeout: float = 5.0

    @property
    def channel(self) -> str:
        """The NOTIFY channel: one per schema, so two queues in one database stay apart."""
        return f"jobqueue.{self.schema}"


def resolve_schema(schema: str | None) -> str:
    name = schema or os.environ.get("JOBQUEUE_SCHEMA") or DEFAULT_SCHEMA
    if not _SCHEMA_RE.match(name):
        raise ConfigError(
            f"invalid schema name {name!r}: use letters, digits and underscores (max 63)"
        )
    return name


def resolve_dsn(dsn: str | None) -> str | None:
    """The explicit DSN, else ``$JOBQUEUE_DSN``; None means "use the embedded Postgres"."""
    value = dsn or os.environ.get("JOBQUEUE_DSN") or None
    if value is not None:
        validate_dsn(value)
    return value


def validate_dsn(dsn: str) -> None:
    try:
        psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError as exc:
        raise ConfigError(f"invalid DSN: {exc}") from None


def redact_dsn(dsn: str) -> str:
    """The DSN with any password replaced, safe for logs and error messages."""
    try:
        params = psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        # Unparseable: a password may be anywhere in it, show nothing.
        return "<unparseable DSN>"
    if "password" in params:
        params["password"] = "***"
    return psycopg.conninfo.make_conninfo("", **params)


def describe_dsn(dsn: str) -> str:
    """A short "which database" line for logs: user@host:port/dbname, no secrets."""
    try:
        p = psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "<unparseable DSN>"
    host = str(p.get("host") or "localhost")
    port = str(p.get("port") or "5432")
    user = str(p.get("user") or "")
    db = str(p.get("dbname") or user)
    return f"{user + '@' if user else ''}{host}:{port}/{db}"
