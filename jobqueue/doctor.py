"""``jobqueue doctor``: health checks of a queue and the database under it.

Each check returns a :class:`Check`: ``ok``, ``problem`` or ``skipped``, a
one-line summary, one line per problem found, and details for ``--json``.
The checks look for what makes Postgres queues fail in practice:

- the schema is not at this jobqueue's revision;
- the jobs table lost its autovacuum settings, or autovacuum is off;
- dead tuples pile up in jobs, or it (and its indexes) have bloated: the claim
  then walks through garbage and every statement slows down;
- a long-open transaction, a forgotten prepared transaction or a replication
  slot holds back the xmin horizon, so vacuum may not remove any dead row
  newer than it (the top cause of queue collapse on Postgres);
- LISTEN/NOTIFY does not deliver (or its queue is filling up);
- workers stopped heartbeating; dead jobs wait for someone; ready jobs wait in
  a queue that no live worker serves, or have waited too long.

Thresholds are :class:`Thresholds` (flags of the command). Every statement is
read-only and runs in autocommit, so one failing check cannot poison another.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql as pgsql

from jobqueue import sql
from jobqueue.config import describe_dsn
from jobqueue.db.migrate import current_revision, head_revision
from jobqueue.overview import QueueOverview, queue_overview

OK, PROBLEM, SKIPPED = "ok", "problem", "skipped"

# The settings the migration gives jobs (see 0001_initial.sql): vacuum after a
# fixed number of dead rows, at full speed.
AUTOVACUUM_KEYS = ("autovacuum_vacuum_scale_factor", "autovacuum_vacuum_threshold",
                   "autovacuum_vacuum_cost_delay")


@dataclass(frozen=True)
class Thresholds:
    """When a finding becomes a problem. Ages in seconds."""

    max_transaction_age: float = 300.0
    max_heartbeat_age: float = 30.0
    max_dead: int = 0
    max_ready_age: float = 300.0
    max_dead_tuple_ratio: float = 0.2
    min_dead_tuples: int = 10_000
    max_bloat_ratio: float = 0.5
    min_bloat_mb: float = 64.0
    listen_timeout: float = 5.0
    max_notify_queue: float = 0.5
    worker_timeout: float = 30.0


@dataclass
class Check:
    name: str
    status: str
    summary: str
    problems: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "status": self.status, "summary": self.summary,
                "problems": self.problems, "details": self.details}


@dataclass
class Report:
    database: str
    schema: str
    checks: list[Check]

    @property
    def ok(self) -> bool:
        return all(c.status != PROBLEM for c in self.checks)

    @property
    def problems(self) -> list[str]:
        return [p for c in self.checks for p in c.problems]

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "database": self.database, "schema": self.schema,
                "problems": len(self.problems),
                "checks": [c.as_dict() for c in self.checks]}


def diagnose(dsn: str, schema: str, thresholds: Thresholds | None = None,
             connect_timeout: float = 5.0) -> Report:
    """Run every check against ``schema`` in the database at ``dsn``."""
    t = thresholds or Thresholds()
    with psycopg.connect(dsn, autocommit=True, connect_timeout=max(1, int(connect_timeout)),
                         application_name="jobqueue-doctor") as conn:
        # The doctor must never become the long transaction or the stuck
        # statement it looks for.
        conn.execute("SET statement_timeout = '30s'")
        conn.execute("SET lock_timeout = '5s'")
        doctor = _Doctor(conn, dsn, schema, t, connect_timeout)
        return Report(describe_dsn(dsn), schema, doctor.run())


def human(seconds: float | None) -> str:
    """``42s``, ``7m31s``, ``3h05m``, ``2d04h``."""
    if seconds is None:
        return "-"
    s = max(0, int(seconds))
    if seconds < 10:
        return f"{max(seconds, 0.0):.1f}s"
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def megabytes(n: float) -> str:
    return f"{n / 2**20:,.1f} MB"


class _Doctor:
    def __init__(self, conn: psycopg.Connection[Any], dsn: str, schema: str, t: Thresholds,
                 connect_timeout: float) -> None:
        self.conn = conn
        self.dsn = dsn
        self.schema = schema
        self.t = t
        self.connect_timeout = connect_timeout
        self.table = pgsql.Identifier(schema, "jobs").as_string(None)
        self.overview: list[QueueOverview] | None = None

    def q(self, name: str, params: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
        return self.conn.execute(sql.query(name, self.schema), params or {}).fetchall()

    def run(self) -> list[Check]:
        checks = [self._guard("migrations", self.migrations)]
        migrated = checks[0].details.get("revision") is not None
        schema_checks: list[tuple[str, Callable[[], Check]]] = [
            ("autovacuum", self.autovacuum), ("dead_tuples", self.dead_tuples),
            ("bloat", self.bloat)]
        database_checks: list[tuple[str, Callable[[], Check]]] = [
            ("transactions", self.transactions), ("xmin_horizon", self.xmin_horizon),
            ("listen", self.listen)]
        queue_checks: list[tuple[str, Callable[[], Check]]] = [
            ("workers", self.workers), ("dead_jobs", self.dead_jobs),
            ("unserved_queues", self.unserved_queues), ("oldest_ready", self.oldest_ready)]
        for name, fn in schema_checks:
            checks.append(self._guard(name, fn) if migrated else _skipped(name))
        for name, fn in database_checks:
            checks.append(self._guard(name, fn))
        for name, fn in queue_checks:
            checks.append(self._guard(name, fn) if migrated else _skipped(name))
        return checks

    def _guard(self, name: str, fn: Callable[[], Check]) -> Check:
        try:
            return fn()
        except psycopg.Error as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            return Check(name, PROBLEM, f"could not check: {first}",
                         [f"{name}: could not check: {first}"])

    def _overview(self) -> list[QueueOverview]:
        if self.overview is None:
            self.overview = queue_overview(self.conn, self.schema, self.t.worker_timeout)
        return self.overview

    # -- the schema ---------------------------------------------------------------------

    def migrations(self) -> Check:
        revision = current_revision(self.conn, self.schema)
        head = head_revision()
        details = {"revision": revision, "head": head}
        flag = f" --schema {self.schema}" if self.schema != "jobqueue" else ""
        if revision is None:
            line = (f"schema {self.schema!r} is not migrated: run `jobqueue migrate{flag}`")
            return Check("migrations", PROBLEM, line, [line], details)
        if revision != head:
            line = (f"schema {self.schema!r} is at revision {revision}, this jobqueue expects "
                    f"{head}: run `jobqueue migrate{flag}` (or upgrade jobqueue)")
            return Check("migrations", PROBLEM, line, [line], details)
        return Check("migrations", OK, f"at head ({head})", details=details)

    def autovacuum(self) -> Check:
        rows = self.q("doctor_autovacuum", {"table": self.table})
        if not rows:
            line = f"{self.schema}.jobs does not exist"
            return Check("autovacuum", PROBLEM, line, [line])
        reloptions, server_autovacuum, track_counts = rows[0]
        options = dict(o.split("=", 1) for o in (reloptions or []))
        problems = []
        if server_autovacuum != "on":
            problems.append("autovacuum is off for the whole server: dead rows of jobs are "
                            "never removed (set autovacuum = on)")
        if track_counts != "on":
            problems.append("track_counts is off: autovacuum cannot see the dead rows of jobs "
                            "(set track_counts = on)")
        if options.get("autovacuum_enabled", "true").lower() in ("false", "off", "0", "no"):
            problems.append(f"{self.schema}.jobs has autovacuum_enabled=false: its dead rows "
                            "are never removed (ALTER TABLE ... RESET (autovacuum_enabled))")
        missing = [k for k in AUTOVACUUM_KEYS if k not in options]
        if missing:
            problems.append(f"{self.schema}.jobs lacks its autovacuum settings "
                            f"({', '.join(missing)}): vacuum would wait for 20% of the table "
                            "to be dead; re-apply them from `jobqueue migrate --sql`")
        details = {"reloptions": options, "autovacuum": server_autovacuum,
                   "track_counts": track_counts}
        if problems:
            return Check("autovacuum", PROBLEM, problems[0], problems, details)
        summary = (f"jobs vacuums after {options['autovacuum_vacuum_threshold']} dead rows "
                   f"(scale factor {options['autovacuum_vacuum_scale_factor']}, cost delay "
                   f"{options['autovacuum_vacuum_cost_delay']})")
        return Check("autovacuum", OK, summary, details=details)

    def dead_tuples(self) -> Check:
        rows = self.q("doctor_table", {"table": self.table, "schema": self.schema})
        live, dead, since_vacuum = (rows[0][0] or 0, rows[0][1] or 0, rows[0][2]) if rows \
            else (0, 0, None)
        ratio = dead / (live + dead) if live + dead else 0.0
        details = {"live": live, "dead": dead, "ratio": round(ratio, 4),
                   "seconds_since_vacuum": since_vacuum}
        vacuumed = f"last vacuum {human(since_vacuum)} ago" if since_vacuum is not None \
            else "never vacuumed"
        summary = f"jobs: {dead:,} dead of {live + dead:,} row versions ({ratio:.0%}), {vacuumed}"
        if dead >= self.t.min_dead_tuples and ratio > self.t.max_dead_tuple_ratio:
            line = (f"jobs has {dead:,} dead row versions, {ratio:.0%} of the table "
                    f"(over {self.t.max_dead_tuple_ratio:.0%}), {vacuumed}: vacuum is not "
                    "keeping up or is blocked (see transactions and xmin_horizon)")
            return Check("dead_tuples", PROBLEM, line, [line], details)
        return Check("dead_tuples", OK, summary, details=details)

    def bloat(self) -> Check:
        rows = self.q("doctor_table", {"table": self.table, "schema": self.schema})
        if not rows:
            return _skipped("bloat")
        live, _dead, _since, table_bytes, block, row_width = rows[0]
        live = max(live or 0, 0)
        # A heap tuple: 23-byte header (padded to 24), the columns, a 4-byte line
        # pointer. Without statistics (never analyzed) assume a small job row.
        width = float(row_width) if row_width is not None else 150.0
        tuple_bytes = 24 + 8 * math.ceil(width / 8) + 4
        expected = max(1, math.ceil(live * tuple_bytes / (block - 24))) * block
        parts: list[dict[str, Any]] = [{"name": "jobs", "bytes": int(table_bytes),
                  "estimated_waste": max(0, int(table_bytes - expected))}]
        for name, size, entries, key_width in self.q("doctor_indexes",
                                                     {"table": self.table,
                                                      "schema": self.schema}):
            # B-tree leaf entry: 8-byte header, the key padded to 8, a line
            # pointer; pages filled to 90 percent; plus the meta and root pages.
            entry = 8 + 8 * math.ceil(float(key_width or 8) / 8) + 4
            pages = math.ceil(min(entries, live) * entry / (block * 0.9)) + 2
            parts.append({"name": name, "bytes": int(size),
                          "estimated_waste": max(0, int(size - pages * block))})
        total = sum(p["bytes"] for p in parts)
        waste = sum(p["estimated_waste"] for p in parts)
        ratio = waste / total if total else 0.0
        details = {"live_rows": live, "total_bytes": total, "estimated_waste_bytes": waste,
                   "ratio": round(ratio, 4), "relations": parts}
        summary = (f"jobs and its indexes take {megabytes(total)} for {live:,} live rows, "
                   f"an estimated {megabytes(waste)} ({ratio:.0%}) of it free space")
        if waste >= self.t.min_bloat_mb * 2**20 and ratio > self.t.max_bloat_ratio:
            worst = max(parts, key=lambda p: p["estimated_waste"])
            line = (f"jobs is bloated: {megabytes(waste)} of its {megabytes(total)} "
                    f"({ratio:.0%}) is estimated dead space, most in {worst['name']}: "
                    "rebuild it with pg_repack (or VACUUM FULL / REINDEX CONCURRENTLY "
                    "in a quiet moment)")
            return Check("bloat", PROBLEM, line, [line], details)
        return Check("bloat", OK, summary, details=details)

    # -- the database -------------------------------------------------------------------

    def transactions(self) -> Check:
        rows = self.conn.execute(sql.query("doctor_transactions", self.schema)).fetchall()
        txs = [{"pid": r[0], "user": r[1], "application": r[2], "client": r[3], "state": r[4],
                "age": round(r[5], 3), "state_age": None if r[6] is None else round(r[6], 3),
                "holds_xid": r[7] is not None, "xmin_age": r[8], "query": r[9]}
               for r in rows]
        old = [tx for tx in txs if tx["age"] > self.t.max_transaction_age]
        details = {"open": len(txs), "oldest": txs[0] if txs else None, "too_old": old}
        if old:
            problems = [_transaction_line(tx, self.t.max_transaction_age) for tx in old]
            return Check("transactions", PROBLEM, problems[0], problems, details)
        if not txs:
            return Check("transactions", OK, "no other open transaction", details=details)
        first = txs[0]
        return Check("transactions", OK,
                     f"{len(txs)} open; the oldest (pid {first['pid']}, {first['state']}) is "
                     f"{human(first['age'])} old", details=details)

    def xmin_horizon(self) -> Check:
        problems = []
        prepared = self.conn.execute(sql.query("doctor_prepared", self.schema)).fetchall()
        stale = [p for p in prepared if p[2] > self.t.max_transaction_age]
        for gid, owner, age, xid_age in stale:
            problems.append(
                f"prepared transaction {gid!r} (owner {owner}) has waited {human(age)} for "
                f"COMMIT PREPARED or ROLLBACK PREPARED, holding the xmin horizon {xid_age:,} "
                "transactions back")
        slots = self.conn.execute(sql.query("doctor_slots", self.schema)).fetchall()
        for name, kind, active, xmin_age, _catalog_age in slots:
            if xmin_age is not None and not active:
                problems.append(
                    f"replication slot {name!r} ({kind}) is inactive and holds the xmin "
                    f"horizon {xmin_age:,} transactions back: vacuum cannot remove dead rows; "
                    f"drop it (pg_drop_replication_slot) if its consumer is gone")
        row = self.conn.execute(sql.query("doctor_horizon_backend", self.schema)).fetchone()
        holders = [("backend", f"pid {row[0]} ({row[1]})", row[2])] if row else []
        holders += [("prepared", repr(p[0]), p[3]) for p in prepared]
        holders += [("slot", repr(s[0]), s[3]) for s in slots if s[3] is not None]
        oldest = max(holders, key=lambda h: h[2] or 0, default=None)
        details: dict[str, Any] = {
            "prepared": [{"gid": p[0], "owner": p[1], "age": p[2], "xid_age": p[3]}
                         for p in prepared],
            "slots": [{"name": s[0], "type": s[1], "active": s[2], "xmin_age": s[3],
                       "catalog_xmin_age": s[4]} for s in slots],
            "oldest": None if oldest is None else
            {"kind": oldest[0], "holder": oldest[1], "xid_age": oldest[2]}}
        if problems:
            return Check("xmin_horizon", PROBLEM, problems[0], problems, details)
        if oldest is None:
            summary = "nothing holds the xmin horizon back"
        else:
            summary = (f"the xmin horizon is {oldest[2] or 0:,} transactions old, held by "
                       f"{oldest[0]} {oldest[1]}; {len(slots)} replication slot(s), "
                       f"{len(prepared)} prepared transaction(s)")
        return Check("xmin_horizon", OK, summary, details=details)

    def listen(self) -> Check:
        channel = f"jobqueue_doctor_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.dsn, autocommit=True,
                             connect_timeout=max(1, int(self.connect_timeout)),
                             application_name="jobqueue-doctor-listen") as listener:
            listener.execute(pgsql.SQL("LISTEN {}").format(pgsql.Identifier(channel)))
            sent = time.monotonic()
            self.conn.execute(sql.query("probe_notify", self.schema),
                              {"channel": channel, "payload": "doctor"})
            received = None
            for note in listener.notifies(timeout=self.t.listen_timeout, stop_after=1):
                if note.channel == channel:
                    received = time.monotonic() - sent
                    break
        usage_row = self.conn.execute(sql.query("doctor_notify_queue", self.schema)).fetchone()
        usage = float(usage_row[0]) if usage_row else 0.0
        details = {"round_trip": received, "notify_queue_usage": usage}
        problems = []
        if received is None:
            problems.append(f"LISTEN/NOTIFY round trip failed: a NOTIFY was not delivered "
                            f"within {self.t.listen_timeout:g}s; workers fall back to polling")
        if usage > self.t.max_notify_queue:
            problems.append(f"the NOTIFY queue is {usage:.0%} full: a session that LISTENs "
                            "is not reading its notifications (when full, every NOTIFY, and "
                            "so every enqueue, fails)")
        if problems:
            return Check("listen", PROBLEM, problems[0], problems, details)
        assert received is not None
        return Check("listen", OK, f"NOTIFY delivered in {received * 1000:.1f} ms; "
                     f"notify queue {usage:.0%} used", details=details)

    # -- the queue ----------------------------------------------------------------------

    def workers(self) -> Check:
        rows = self.q("worker_heartbeats")
        workers = [{"id": r[0], "hostname": r[1], "pid": r[2], "queues": list(r[3]),
                    "heartbeat_age": round(r[5], 3)} for r in rows]
        stale = [w for w in workers if w["heartbeat_age"] > self.t.max_heartbeat_age]
        details = {"workers": workers, "stale": stale}
        if stale:
            problems = [
                f"worker {w['id']} (pid {w['pid']} on {w['hostname']}) last heartbeat "
                f"{human(w['heartbeat_age'])} ago: it is dead or stuck; its jobs return to "
                "their queue when a live worker's maintenance reaps it" for w in stale]
            return Check("workers", PROBLEM, problems[0], problems, details)
        if not workers:
            return Check("workers", OK, "no worker registered", details=details)
        newest = min(w["heartbeat_age"] for w in workers)
        return Check("workers", OK, f"{len(workers)} worker(s), all heartbeating (latest "
                     f"{human(newest)} ago)", details=details)

    def dead_jobs(self) -> Check:
        per_queue = {q.queue: q.dead for q in self._overview() if q.dead}
        total = sum(per_queue.values())
        details = {"dead": total, "by_queue": per_queue}
        if total > self.t.max_dead:
            where = ", ".join(f"{q}: {n:,}" for q, n in sorted(per_queue.items()))
            line = (f"{total:,} dead job(s) waiting for someone ({where}): inspect with "
                    "`jobqueue dead list`, then replay or purge them")
            return Check("dead_jobs", PROBLEM, line, [line], details)
        return Check("dead_jobs", OK, f"{total:,} dead job(s)", details=details)

    def unserved_queues(self) -> Check:
        rows = self._overview()
        unserved = [q for q in rows if q.queued and not q.workers and not q.paused]
        paused = [q for q in rows if q.queued and q.paused]
        details = {"unserved": {q.queue: q.queued for q in unserved},
                   "paused_with_ready_jobs": {q.queue: q.queued for q in paused}}
        if unserved:
            problems = [f"queue {q.queue!r} has {q.queued:,} ready job(s) and no live worker "
                        f"serves it: start one with --queues {q.queue}" for q in unserved]
            return Check("unserved_queues", PROBLEM, problems[0], problems, details)
        summary = "every queue with ready jobs has a live worker"
        if paused:
            summary += f" (paused, with ready jobs: {', '.join(q.queue for q in paused)})"
        return Check("unserved_queues", OK, summary, details=details)

    def oldest_ready(self) -> Check:
        rows = [q for q in self._overview() if q.oldest_age is not None and not q.paused]
        late = [q for q in rows if (q.oldest_age or 0) > self.t.max_ready_age]
        details = {"oldest": {q.queue: q.oldest_age for q in rows}}
        if late:
            problems = [f"queue {q.queue!r}: the oldest ready job has waited "
                        f"{human(q.oldest_age)} (over {human(self.t.max_ready_age)}) with "
                        f"{q.queued:,} ready: its workers are behind or stuck" for q in late]
            return Check("oldest_ready", PROBLEM, problems[0], problems, details)
        if not rows:
            return Check("oldest_ready", OK, "no job is waiting", details=details)
        worst = max(rows, key=lambda q: q.oldest_age or 0)
        return Check("oldest_ready", OK, f"the oldest ready job ({worst.queue}) has waited "
                     f"{human(worst.oldest_age)}", details=details)


def _skipped(name: str) -> Check:
    return Check(name, SKIPPED, "skipped: the schema is not migrated")


def _transaction_line(tx: dict[str, Any], limit: float) -> str:
    who = tx["user"] or "?"
    if tx["application"]:
        who += f", {tx['application']}"
    if tx["client"]:
        who += f" from {tx['client']}"
    holds = ("holding back the xmin horizon (vacuum cannot remove newer dead rows)"
             if tx["holds_xid"] or tx["xmin_age"] is not None else "holding its locks")
    query = f': "{tx["query"]}"' if tx["query"] else ""
    return (f"pid {tx['pid']} ({who}) has had a transaction open for {human(tx['age'])} "
            f"(over {human(limit)}), now {tx['state']}, {holds}{query}")
