"""Settings and defaults: where the database is, which schema, and every default once.

The DSN comes from the argument, else ``$JOBQUEUE_DSN``, else the embedded
Postgres (started lazily, the first time a connection is needed). The schema
comes from the argument, else ``$JOBQUEUE_SCHEMA``, else ``jobqueue``.

Every default that more than one module needs (the lease, the worker timeout,
the payload limit...) is declared here and nowhere else: the worker, the
leader's rescue, ``stats`` and ``doctor`` must agree on what "a silent worker"
means, and they can only agree if they read one number.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

import psycopg.conninfo

from jobqueue.errors import ConfigError

DEFAULT_SCHEMA = "jobqueue"
DEFAULT_QUEUE = "default"
DEFAULT_PRIORITY = 0
DEFAULT_MAX_ATTEMPTS = 5
DEFAULT_PAYLOAD_LIMIT = 64 * 1024
DEFAULT_CONNECT_TIMEOUT = 5.0
#: How long a claimed job stays the worker's without a heartbeat, seconds.
DEFAULT_LEASE = 30.0
#: A worker silent this long (no heartbeat) is reaped and its jobs rescued.
DEFAULT_WORKER_TIMEOUT = 30.0
DEFAULT_HEARTBEAT_INTERVAL = 2.0
DEFAULT_SHUTDOWN_TIMEOUT = 30.0
DEFAULT_CONCURRENCY = 10
#: Claimed jobs a worker may hold ready beyond those running, per unit of
#: concurrency (Celery's prefetch multiplier has the same default) ...
DEFAULT_PREFETCH_PER_SLOT = 4
#: ... or, unless --prefetch fixes it, as many as the worker runs in this many
#: seconds, when that is more (short jobs) ...
DEFAULT_PREFETCH_HORIZON = 0.05
#: ... but never more than this many.
DEFAULT_PREFETCH_CAP = 1000
DEFAULT_BATCH_SIZE = 100
#: How long a succeeded job stays in job_history (its result with it), seconds:
#: a week, the span of "did last Monday's export run?".
DEFAULT_HISTORY = 7 * 24 * 3600.0
#: A running job's ctx.progress() is written at most this often, seconds.
DEFAULT_PROGRESS_INTERVAL = 0.25
DEFAULT_POLL_INTERVAL = 1.0
#: How long a producer trusts its list of the queues that have a max_ready
#: before reading it again (on the next enqueue), seconds: a limit set in
#: another process is enforced within this; one set by this app at once.
BACKPRESSURE_TTL = 2.0
#: ``queue.over_limit`` is logged at most this often per queue and process, seconds.
OVER_LIMIT_LOG_INTERVAL = 10.0
#: A job enqueued for a newer payload version than the worker knows goes back
#: to the queue, due again this many seconds later (a rolling deploy's newer
#: workers take it; this one does not spin on it), seconds.
NEWER_VERSION_DELAY = 2.0
#: A process-pool child over --max-memory is replaced after its job; the
#: worker itself (under --supervise) checks its own RSS this often, seconds.
MEMORY_CHECK_INTERVAL = 0.25
#: What sits between jobqueue and Postgres: "none" (direct connections or a
#: session pooler) or "transaction" (PgBouncer's transaction mode and its kin).
POOLERS = ("none", "transaction")
DEFAULT_POOLER = "none"

_SCHEMA_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


@dataclass(frozen=True)
class Settings:
    """Resolved settings of one :class:`jobqueue.JobQueue`."""

    dsn: str | None
    schema: str = DEFAULT_SCHEMA
    payload_limit: int = DEFAULT_PAYLOAD_LIMIT
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    pooler: str = DEFAULT_POOLER
    #: A direct connection for LISTEN, bypassing the pooler (None: the DSN's database).
    listen_dsn: str | None = None

    @property
    def pooled(self) -> bool:
        """True behind a transaction pooler: consecutive transactions of one client
        connection may run on different server sessions, so jobqueue's own
        connections prepare no statement and keep no session state (see README,
        "Behind PgBouncer")."""
        return self.pooler == "transaction"

    @property
    def connect_timeout_arg(self) -> int:
        """``connect_timeout`` as libpq takes it: whole seconds, at least 1 (0 means forever)."""
        return max(1, int(self.connect_timeout))


def resolve_schema(schema: str | None) -> str:
    name = schema or os.environ.get("JOBQUEUE_SCHEMA") or DEFAULT_SCHEMA
    if not _SCHEMA_RE.match(name):
        raise ConfigError(
            f"invalid schema name {name!r}: use letters, digits and underscores (max 63)"
        )
    return name


def resolve_dsn(dsn: str | None) -> str | None:
    """The explicit DSN, else ``$JOBQUEUE_DSN``; None means "use the embedded Postgres"."""
    return _dsn_or_env(dsn, "JOBQUEUE_DSN")


def resolve_pooler(pooler: str | None) -> str:
    """The argument, else ``$JOBQUEUE_POOLER``, else "none"."""
    value = (pooler or os.environ.get("JOBQUEUE_POOLER") or DEFAULT_POOLER).strip().lower()
    if value not in POOLERS:
        raise ConfigError(f"invalid pooler {value!r}: use one of {', '.join(POOLERS)}")
    return value


def resolve_listen_dsn(dsn: str | None) -> str | None:
    """The argument, else ``$JOBQUEUE_LISTEN_DSN``, else None."""
    return _dsn_or_env(dsn, "JOBQUEUE_LISTEN_DSN")


def _dsn_or_env(dsn: str | None, variable: str) -> str | None:
    value = dsn or os.environ.get(variable) or None
    if value is not None:
        validate_dsn(value)
    return value


def validate_dsn(dsn: str) -> None:
    try:
        psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError as exc:
        # libpq's message ends in a newline and quotes pieces of the DSN back,
        # sometimes the password or the whole URI: one line, secrets hidden.
        raise ConfigError(f"invalid DSN: {_scrub(str(exc).strip(), dsn)}") from None


_PASSWORD_RES = (
    re.compile(r"^\s*\w+://[^:/?#@]*:(.*)@"),  # URI userinfo, up to the last "@"
    re.compile(r"^\s*\w+://[^:/?#@]*:([^@]*)@"),  # ... or up to the first one
    re.compile(r"password\s*=\s*('(?:\\.|[^'\\])*'?|[^\s&]*)"),  # key=value or ?password=
)


def _scrub(message: str, dsn: str) -> str:
    """``message`` without anything that may be (part of) the password in ``dsn``."""
    secrets = {m.group(1) for r in _PASSWORD_RES for m in r.finditer(dsn) if m.group(1)}
    secrets |= {s.strip("'") for s in secrets if s.strip("'")}

    def quoted(m: re.Match[str]) -> str:
        inner = m.group(1)
        hit = any(inner and (inner in s or s in inner) for s in secrets)
        return '"***"' if hit else m.group(0)

    message = re.sub(r'"([^"]*)"', quoted, message)
    for secret in sorted(secrets, key=len, reverse=True):
        message = message.replace(secret, "***")
    return " ".join(message.split())


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


def migrate_hint(schema: str) -> str:
    """The command that migrates ``schema``: a bare ``jobqueue migrate`` does the default one."""
    flag = f" --schema {schema}" if schema != DEFAULT_SCHEMA else ""
    return f"`jobqueue migrate{flag}`"
