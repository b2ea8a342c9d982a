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

from jobqueue.config import DEFAULT_WORKER_TIMEOUT, Settings, describe_dsn, migrate_hint
from jobqueue.db import doctor as ops
from jobqueue.db import fleet, migrate
from jobqueue.db.admin import queue_overview
from jobqueue.db.statement import Op, Procedure, in_transaction, listen
from jobqueue.db.store import Store
from jobqueue.errors import DatabaseError
from jobqueue.rows import QueueOverview, WorkerBeat

OK, PROBLEM, SKIPPED = "ok", "problem", "skipped"

# The settings the migration gives jobs (see 0001_initial.sql): vacuum after a
# fixed number of dead rows, at full speed.
AUTOVACUUM_KEYS = ("autovacuum_vacuum_scale_factor", "autovacuum_vacuum_threshold",
                   "autovacuum_vacuum_cost_delay")


@dataclass(frozen=True)
class Thresholds:
    """When a finding becomes a problem. Ages in seconds."""

    max_transaction_age: float = 300.0
    max_heartbeat_age: float = DEFAULT_WORKER_TIMEOUT
    max_dead: int = 0
    max_ready_age: float = 300.0
    max_dead_tuple_ratio: float = 0.2
    min_dead_tuples: int = 10_000
    max_bloat_ratio: float = 0.5
    min_bloat_mb: float = 64.0
    listen_timeout: float = 5.0
    max_notify_queue: float = 0.5
    worker_timeout: float = DEFAULT_WORKER_TIMEOUT


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
             connect_timeout: float = 5.0, pooler: str = "none",
             listen_dsn: str | None = None) -> Report:
    """Run every check against ``schema`` in the database at ``dsn``."""
    t = thresholds or Thresholds()
    # No schema probe: an unmigrated schema is a finding here, not an error.
    store = Store(Settings(dsn, schema, connect_timeout=connect_timeout, pooler=pooler,
                           listen_dsn=listen_dsn), probe=False)
    try:
        with store.connect(autocommit=True, application_name="jobqueue-doctor") as conn:
            # The doctor must never become the long transaction or the stuck
            # statement it looks for. Behind a transaction pooler a session
            # setting would stay with a server connection that others use next:
            # there each check sets them for its own transaction (see _Doctor.q).
            if not store.settings.pooled:
                store.run(ops.session(), conn)
            doctor = _Doctor(store, conn, schema, t)
            return Report(describe_dsn(dsn), schema, doctor.run())
    finally:
        store.close()


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


def _bounded(op: Op) -> Procedure[Any]:
    """``op`` after the doctor's timeouts, set for its transaction only."""
    yield ops.transaction_settings()
    return (yield op)


class _Doctor:
    def __init__(self, store: Store, conn: psycopg.Connection[Any], schema: str,
                 t: Thresholds) -> None:
        self.store = store
        self.conn = conn
        self.schema = schema
        self.t = t
        self.overview: list[QueueOverview] | None = None

    def q(self, op: Op) -> Any:
        """One statement on the doctor's connection, through the Store."""
        if self.store.settings.pooled:
            return self.store.run(in_transaction(_bounded(op)), self.conn)
        return self.store.run(op, self.conn)

    def run(self) -> list[Check]:
        checks = [self._guard("migrations", self.migrations)]
        migrated = checks[0].details.get("revision") is not None
        schema_checks: list[tuple[str, Callable[[], Check]]] = [
            ("autovacuum", self.autovacuum), ("dead_tuples", self.dead_tuples),
            ("bloat", self.bloat), ("history", self.history)]
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
        except DatabaseError as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            return Check(name, PROBLEM, f"could not check: {first}",
                         [f"{name}: could not check: {first}"])

    def _overview(self) -> list[QueueOverview]:
        if self.overview is None:
            self.overview = self.q(queue_overview(self.t.worker_timeout))
        return self.overview

    # -- the schema ---------------------------------------------------------------------

    def migrations(self) -> Check:
        revision = self.store.run(in_transaction(migrate.revision(self.schema)), self.conn)
        head = migrate.head_revision()
        details = {"revision": revision, "head": head}
        hint = migrate_hint(self.schema)
        if revision is None:
            line = (f"schema {self.schema!r} is not migrated: run {hint}")
            return Check("migrations", PROBLEM, line, [line], details)
        if revision != head:
            line = (f"schema {self.schema!r} is at revision {revision}, this jobqueue expects "
                    f"{head}: run {hint} (or upgrade jobqueue)")
            return Check("migrations", PROBLEM, line, [line], details)
        return Check("migrations", OK, f"at head ({head})", details=details)

    def autovacuum(self) -> Check:
        found: ops.AutovacuumSettings | None = self.q(ops.autovacuum(self.schema))
        if found is None:
            line = f"{self.schema}.jobs does not exist"
            return Check("autovacuum", PROBLEM, line, [line])
        server_autovacuum, track_counts = found.autovacuum, found.track_counts
        options = dict(o.split("=", 1) for o in (found.reloptions or []))
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
        stats: ops.TableStats | None = self.q(ops.table_stats(self.schema))
        live = (stats.n_live_tup or 0) if stats else 0
        dead = (stats.n_dead_tup or 0) if stats else 0
        since_vacuum = stats.since_vacuum if stats else None
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

    def history(self) -> Check:
        found: ops.HistoryPartitions = self.q(ops.history())
        details = {"today": found.today, "days_ahead": found.ahead,
                   "rows_in_default": found.in_default}
        problems = []
        if found.in_default:
            problems.append(
                f"{found.in_default:,} history row(s) in job_history_default: their day had "
                "no partition, so the maintenance leader has not been making them (no "
                "worker running, or a worker role without EXECUTE on maintain_history: "
                "`jobqueue migrate --grant-worker ROLE`); they are pruned there by DELETE")
        elif not found.today:
            problems.append("no job_history partition for today (UTC): successes will land "
                            "in the default partition until a worker's leader makes one")
        if problems:
            return Check("history", PROBLEM, problems[0], problems, details)
        return Check("history", OK, f"today's partition and {found.ahead} day(s) ahead",
                     details=details)

    def bloat(self) -> Check:
        stats: ops.TableStats | None = self.q(ops.table_stats(self.schema))
        if stats is None:
            return _skipped("bloat")
        live = max(stats.n_live_tup or 0, 0)
        table_bytes, block = stats.table_bytes, stats.block_size
        # A heap tuple: 23-byte header (padded to 24), the columns, a 4-byte line
        # pointer. Without statistics (never analyzed) assume a small job row.
        width = float(stats.row_width) if stats.row_width is not None else 150.0
        tuple_bytes = 24 + 8 * math.ceil(width / 8) + 4
        expected = max(1, math.ceil(live * tuple_bytes / (block - 24))) * block
        parts: list[dict[str, Any]] = [{"name": "jobs", "bytes": int(table_bytes),
                  "estimated_waste": max(0, int(table_bytes - expected))}]
        index_stats: list[ops.IndexStats] = self.q(ops.indexes(self.schema))
        for index in index_stats:
            # B-tree leaf entry: 8-byte header, the key padded to 8, a line
            # pointer; pages filled to 90 percent; plus the meta and root pages.
            entry = 8 + 8 * math.ceil(float(index.key_width or 8) / 8) + 4
            pages = math.ceil(min(index.entries, live) * entry / (block * 0.9)) + 2
            parts.append({"name": index.name, "bytes": int(index.bytes),
                          "estimated_waste": max(0, int(index.bytes - pages * block))})
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
        open_txs: list[ops.OpenTransaction] = self.q(ops.transactions())
        txs: list[dict[str, Any]] = [
            {"pid": r.pid, "user": r.usename, "application": r.application_name,
             "client": r.client, "state": r.state, "age": round(r.xact_age, 3),
             "state_age": None if r.state_age is None else round(r.state_age, 3),
             "holds_xid": r.xid_age is not None, "xmin_age": r.xmin_age, "query": r.query}
            for r in open_txs]
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
        prepared: list[ops.PreparedTransaction] = self.q(ops.prepared())
        stale = [p for p in prepared if p.age > self.t.max_transaction_age]
        for p in stale:
            problems.append(
                f"prepared transaction {p.gid!r} (owner {p.owner}) has waited {human(p.age)} "
                f"for COMMIT PREPARED or ROLLBACK PREPARED, holding the xmin horizon "
                f"{p.xid_age:,} transactions back")
        slots: list[ops.ReplicationSlot] = self.q(ops.slots())
        for s in slots:
            if s.xmin_age is not None and not s.active:
                problems.append(
                    f"replication slot {s.slot_name!r} ({s.slot_type}) is inactive and holds "
                    f"the xmin horizon {s.xmin_age:,} transactions back: vacuum cannot remove "
                    f"dead rows; drop it (pg_drop_replication_slot) if its consumer is gone")
        backend: ops.HorizonBackend | None = self.q(ops.horizon_backend())
        holders = ([_Holder("backend", f"pid {backend.pid} ({backend.state})", backend.xid_age)]
                   if backend else [])
        holders += [_Holder("prepared", repr(p.gid), p.xid_age) for p in prepared]
        holders += [_Holder("slot", repr(s.slot_name), s.xmin_age) for s in slots
                    if s.xmin_age is not None]
        oldest = max(holders, key=lambda h: h.xid_age or 0, default=None)
        details: dict[str, Any] = {
            "prepared": [{"gid": p.gid, "owner": p.owner, "age": p.age, "xid_age": p.xid_age}
                         for p in prepared],
            "slots": [{"name": s.slot_name, "type": s.slot_type, "active": s.active,
                       "xmin_age": s.xmin_age, "catalog_xmin_age": s.catalog_xmin_age}
                      for s in slots],
            "oldest": None if oldest is None else
            {"kind": oldest.kind, "holder": oldest.holder, "xid_age": oldest.xid_age}}
        if problems:
            return Check("xmin_horizon", PROBLEM, problems[0], problems, details)
        if oldest is None:
            summary = "nothing holds the xmin horizon back"
        else:
            summary = (f"the xmin horizon is {oldest.xid_age or 0:,} transactions old, held by "
                       f"{oldest.kind} {oldest.holder}; {len(slots)} replication slot(s), "
                       f"{len(prepared)} prepared transaction(s)")
        return Check("xmin_horizon", OK, summary, details=details)

    def listen(self) -> Check:
        settings = self.store.settings
        if settings.pooled and settings.listen_dsn is None:
            return Check("listen", OK, "not checked: behind a transaction pooler without a "
                         "listen_dsn, workers poll", details={"round_trip": None})
        channel = f"jobqueue_doctor_{uuid.uuid4().hex[:12]}"
        with self.store.errors():  # a failed connect is this check's finding
            listener = psycopg.connect(settings.listen_dsn or self.store.dsn, autocommit=True,
                                       connect_timeout=settings.connect_timeout_arg,
                                       application_name="jobqueue-doctor-listen")
        with listener:
            self.store.run(listen(channel), listener)
            sent = time.monotonic()
            self.store.run(fleet.probe_notify(channel, "doctor"), self.conn)
            received = None
            # Reading notifications is psycopg, not a statement: the Store still
            # turns a dropped connection into the DatabaseError _guard reports.
            with self.store.errors():
                for note in listener.notifies(timeout=self.t.listen_timeout, stop_after=1):
                    if note.channel == channel:
                        received = time.monotonic() - sent
                        break
        found: float | None = self.q(ops.notify_queue())
        usage = float(found) if found is not None else 0.0
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
        beats: list[WorkerBeat] = self.q(fleet.worker_heartbeats())
        workers: list[dict[str, Any]] = [
            {"id": b.id, "hostname": b.hostname, "pid": b.pid, "queues": list(b.queues),
             "heartbeat_age": round(b.age, 3)} for b in beats]
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


@dataclass(frozen=True, slots=True)
class _Holder:
    """Something that holds the xmin horizon back, and by how many transactions."""

    kind: str
    holder: str
    xid_age: int | None


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
