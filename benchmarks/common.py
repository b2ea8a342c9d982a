"""What every scenario and target shares: databases, results, percentiles, the machine.

A run writes only to what it creates itself: schemas named ``jqbench_<hex>`` in
the database of ``--dsn`` (dropped at the end of each scenario), and for each
peer one dedicated database on the same server (``jq_bench_pgqueuer``,
``jq_bench_procrastinate``, ``jq_bench_graphile``), dropped and created again
for every scenario so the peers' own schemas never collide with each other or
with jobqueue's.
"""

from __future__ import annotations

import os
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from jobqueue.db import migrate

QUEUE = "default"


class BenchmarkError(RuntimeError):
    """A phase whose counts do not add up: its number would be a lie, so the run fails."""


@dataclass
class Result:
    """One row of a scenario: one target (or one raw variant) measured once."""

    scenario: str
    target: str  # "raw", "jobqueue", "pgqueuer", "procrastinate"
    label: str  # the row's name in the table
    settings: str  # how it was configured, in words
    jobs: int
    seconds: float
    floor_candidate: bool = False  # a raw row: may serve as the scenario's floor
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.jobs / self.seconds if self.seconds > 0 else 0.0


def fresh_schema(dsn: str) -> str:
    """A new schema with jobqueue's tables, migrated to head."""
    schema = f"jqbench_{uuid.uuid4().hex[:10]}"
    migrate.upgrade(dsn, schema)
    return schema


def drop_schema(dsn: str, schema: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SET lock_timeout = '30s'")
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


def database_dsn(dsn: str, dbname: str) -> str:
    """The same server and credentials as ``dsn``, another database."""
    params = conninfo_to_dict(dsn)
    params["dbname"] = dbname
    return make_conninfo(**params)


def recreate_database(dsn: str, dbname: str) -> str:
    """Drop ``dbname`` (ending its sessions) and create it empty; its DSN."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        ident = sql.Identifier(dbname)
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(ident))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(ident))
    return database_dsn(dsn, dbname)


def drop_database(dsn: str, dbname: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
                     .format(sql.Identifier(dbname)))


def vacuum_analyze(dsn: str, table: sql.Composable) -> None:
    """Start every timed phase from the same state: fresh statistics, and no
    autovacuum of the bulk load landing in the middle of the measurement."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("VACUUM ANALYZE {}").format(table))


def scalar(dsn: str, query: sql.Composable | str, params: Any = None) -> Any:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(query, params).fetchone()  # type: ignore[arg-type]
    return row[0] if row else None


def table_stats(dsn: str, schema: str, table: str) -> dict[str, int]:
    """Live and dead tuples of one table, as the statistics collector last saw them."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT n_live_tup, n_dead_tup, autovacuum_count, "
            "pg_total_relation_size(relid) FROM pg_stat_user_tables "
            "WHERE schemaname = %s AND relname = %s", (schema, table)).fetchone()
    if row is None:
        return {"live": -1, "dead": -1, "autovacuums": -1, "bytes": -1}
    return {"live": int(row[0]), "dead": int(row[1]), "autovacuums": int(row[2]),
            "bytes": int(row[3])}


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) by linear interpolation between closest ranks."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    pos = (len(ordered) - 1) * q / 100.0
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def rss_bytes(pid: int) -> int:
    """Resident set size of a process (Linux /proc), 0 where it cannot be read."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def environment(dsn: str) -> dict[str, Any]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        version = conn.execute("SHOW server_version").fetchone()
        sync = conn.execute("SHOW synchronous_commit").fetchone()
        fsync = conn.execute("SHOW fsync").fetchone()
        autovacuum = conn.execute("SHOW autovacuum").fetchone()
        host = conn.info.host
    load = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
    return {
        "postgres": str(version[0]) if version else "?",
        "synchronous_commit": str(sync[0]) if sync else "?",
        "fsync": str(fsync[0]) if fsync else "?",
        "autovacuum": str(autovacuum[0]) if autovacuum else "?",
        "host": host,
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
        "load_average_at_start": [round(x, 2) for x in load],
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def autovacuum_on(dsn: str) -> bool:
    return str(scalar(dsn, "SHOW autovacuum")) == "on"
