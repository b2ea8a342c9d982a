"""The statements of ``jobqueue doctor`` and the typed rows they return.

Each function builds one :class:`~jobqueue.db.statement.Op` over a ``doctor_*``
statement of ``queries.sql``; :mod:`jobqueue.doctor` runs them through the
Store and judges what comes back. Every statement is read-only. Rows are built
by column name, so each class below declares exactly the columns of its
statement.
"""

from __future__ import annotations

from dataclasses import dataclass

from psycopg import sql as pgsql

from jobqueue.db.statement import Op, row, rows, run, scalar


def jobs_table(schema: str) -> str:
    """``schema.jobs`` quoted, as ``to_regclass`` takes it (a value, not an identifier)."""
    return pgsql.Identifier(schema, "jobs").as_string(None)


# -- rows ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AutovacuumSettings:
    """The jobs table's storage options and the server's autovacuum switches."""

    reloptions: list[str] | None
    autovacuum: str
    track_counts: str


@dataclass(frozen=True, slots=True)
class HistoryPartitions:
    """Whether today's history partition exists, days made ahead, rows in the default."""

    today: bool
    ahead: int
    in_default: int


@dataclass(frozen=True, slots=True)
class TableStats:
    """Row counts (estimates), the time since the last vacuum and sizes of jobs."""

    n_live_tup: int | None
    n_dead_tup: int | None
    since_vacuum: float | None
    table_bytes: int
    block_size: int
    row_width: int | None


@dataclass(frozen=True, slots=True)
class IndexStats:
    """One index of jobs: its size, entries and average key width."""

    name: str
    bytes: int
    entries: float
    key_width: int | None


@dataclass(frozen=True, slots=True)
class OpenTransaction:
    """An open transaction of another session of this database."""

    pid: int
    usename: str | None
    application_name: str | None
    client: str | None
    state: str | None
    xact_age: float
    state_age: float | None
    xid_age: int | None
    xmin_age: int | None
    query: str | None


@dataclass(frozen=True, slots=True)
class HorizonBackend:
    """The session holding the xmin horizon of this database."""

    pid: int
    state: str | None
    xid_age: int | None


@dataclass(frozen=True, slots=True)
class PreparedTransaction:
    gid: str
    owner: str
    age: float
    xid_age: int


@dataclass(frozen=True, slots=True)
class ReplicationSlot:
    slot_name: str
    slot_type: str
    active: bool
    xmin_age: int | None
    catalog_xmin_age: int | None


# -- statements ----------------------------------------------------------------------------


def session() -> Op:
    """The doctor's session settings (statement and lock timeouts)."""
    return run("doctor_session")


def transaction_settings() -> Op:
    """:func:`session` for one transaction (behind a transaction pooler)."""
    return run("doctor_transaction")


def autovacuum(schema: str) -> Op:
    """-> :class:`AutovacuumSettings`, or None when ``schema.jobs`` does not exist."""
    return row("doctor_autovacuum", {"table": jobs_table(schema)}, AutovacuumSettings)


def table_stats(schema: str) -> Op:
    """-> :class:`TableStats`, or None when ``schema.jobs`` does not exist."""
    return row("doctor_table", {"table": jobs_table(schema), "schema": schema}, TableStats)


def history() -> Op:
    return row("doctor_history", None, HistoryPartitions)


def indexes(schema: str) -> Op:
    """-> list of :class:`IndexStats`, by index name."""
    return rows("doctor_indexes", {"table": jobs_table(schema), "schema": schema},
                IndexStats)


def transactions() -> Op:
    """-> list of :class:`OpenTransaction`, oldest first."""
    return rows("doctor_transactions", None, OpenTransaction)


def horizon_backend() -> Op:
    """-> :class:`HorizonBackend`, or None when no session holds the horizon."""
    return row("doctor_horizon_backend", None, HorizonBackend)


def prepared() -> Op:
    """-> list of :class:`PreparedTransaction`, oldest first."""
    return rows("doctor_prepared", None, PreparedTransaction)


def slots() -> Op:
    """-> list of :class:`ReplicationSlot`, by name."""
    return rows("doctor_slots", None, ReplicationSlot)


def notify_queue() -> Op:
    """-> the share of the NOTIFY queue in use, 0 to 1."""
    return scalar("doctor_notify_queue")
