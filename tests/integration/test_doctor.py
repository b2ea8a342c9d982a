"""``jobqueue.doctor``: each check finds its real problem, and passes when it is gone.

Problems are made for real: a transaction held open, a worker row whose
heartbeat stopped, jobs nobody serves, a dead job, dead tuples and bloat from
deleted rows. The database is shared (other sessions may exist), so the tests
assert on their own findings (their pid, their schema) rather than on an
empty list.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

from jobqueue import JobQueue, PermanentError
from jobqueue.doctor import OK, PROBLEM, SKIPPED, Check, Report, Thresholds, diagnose
from tests.helpers import count, wait_until

# Generous where other sessions of a shared server could trip a check.
CALM = Thresholds(max_transaction_age=3600.0, max_ready_age=3600.0)


def checks(report: Report) -> dict[str, Check]:
    return {c.name: c for c in report.checks}


def server_autovacuum(admin: psycopg.Connection[Any]) -> bool:
    row = admin.execute("SHOW autovacuum").fetchone()
    return row is not None and row[0] == "on"


def test_a_healthy_queue_passes_every_queue_check(app: JobQueue,
                                                  admin: psycopg.Connection[Any]) -> None:
    @app.task()
    def ok() -> None:
        return None

    app.enqueue_many([("ok", None)] * 5)
    app.run_worker(burst=True, handle_signals=False)
    report = diagnose(app.dsn, app.schema, CALM)
    by_name = checks(report)
    assert list(by_name) == ["migrations", "autovacuum", "dead_tuples", "bloat", "history",
                             "transactions", "xmin_horizon", "listen", "workers",
                             "dead_jobs", "unserved_queues", "oldest_ready"]
    for name in ("migrations", "dead_tuples", "bloat", "history", "transactions",
                 "xmin_horizon", "listen", "workers", "dead_jobs", "unserved_queues",
                 "oldest_ready"):
        assert by_name[name].status == OK, (name, by_name[name].problems)
    assert by_name["listen"].details["round_trip"] > 0
    assert by_name["migrations"].details["revision"] == by_name["migrations"].details["head"]
    # The one check that depends on the server's configuration, not on the queue:
    # the CI server runs with autovacuum = off, which the doctor must call out.
    if server_autovacuum(admin):
        assert by_name["autovacuum"].status == OK
        assert report.ok and report.problems == []
    else:
        assert by_name["autovacuum"].status == PROBLEM
        assert report.problems == [by_name["autovacuum"].problems[0]]
        assert "autovacuum is off for the whole server" in report.problems[0]


def test_a_transaction_held_open_is_reported_with_its_pid_and_age(
        app: JobQueue, pg_dsn: str, admin: psycopg.Connection[Any]) -> None:
    with psycopg.connect(pg_dsn) as holder:
        pid = holder.info.backend_pid
        holder.execute("SELECT txid_current()")  # an xid: it holds the xmin horizon
        wait_until(lambda: admin.execute(
            "SELECT now() - xact_start > interval '1.5 seconds' FROM pg_stat_activity "
            "WHERE pid = %s", (pid,)).fetchone() == (True,), 10, message="an old transaction")

        report = diagnose(app.dsn, app.schema, Thresholds(max_transaction_age=1.0))
        tx = checks(report)["transactions"]
        assert tx.status == PROBLEM and not report.ok
        mine = [t for t in tx.details["too_old"] if t["pid"] == pid]
        assert len(mine) == 1
        assert mine[0]["age"] >= 1.5 and mine[0]["holds_xid"] is True
        assert mine[0]["state"] == "idle in transaction"
        line = next(p for p in tx.problems if f"pid {pid} " in p)
        assert "transaction open for" in line and "xmin horizon" in line
        assert "SELECT txid_current()" in line
        horizon = checks(report)["xmin_horizon"].details["oldest"]
        assert horizon is not None and horizon["kind"] == "backend"
        holder.rollback()

    after = checks(diagnose(app.dsn, app.schema, Thresholds(max_transaction_age=1.0)))
    assert [t for t in after["transactions"].details["too_old"] if t["pid"] == pid] == []


def test_an_unmigrated_schema_is_one_problem_and_the_rest_is_skipped(
        pg_dsn: str, schema: str) -> None:
    report = diagnose(pg_dsn, schema, CALM)
    by_name = checks(report)
    assert by_name["migrations"].status == PROBLEM
    assert f"jobqueue migrate --schema {schema}" in by_name["migrations"].problems[0]
    for name in ("autovacuum", "dead_tuples", "bloat", "history", "workers", "dead_jobs",
                 "unserved_queues", "oldest_ready"):
        assert by_name[name].status == SKIPPED
    assert by_name["listen"].status == OK


def test_stale_workers_dead_jobs_unserved_and_late_queues(
        app: JobQueue, admin: psycopg.Connection[Any]) -> None:
    @app.task(queue="work")
    def broken() -> None:
        raise PermanentError("no")

    app.enqueue("broken")
    app.run_worker(queues=["work"], burst=True, handle_signals=False)
    assert count(admin, app.schema, "dead_jobs") == 1
    # A worker that stopped heartbeating two minutes ago (killed, host gone).
    admin.execute(sql.SQL(
        "INSERT INTO {} (id, hostname, pid, queues, concurrency, heartbeat_at) "
        "VALUES ('ghost:1:abc', 'ghost', 1, '{{orphan}}', 4, now() - interval '2 minutes')"
    ).format(sql.Identifier(app.schema, "workers")))
    app.enqueue_many([("x", None)] * 3, queue="orphan", strict=False)
    app.enqueue_many([("x", None)] * 2, queue="later", strict=False, delay=3600)

    wait_until(lambda: admin.execute(sql.SQL(
        "SELECT min(now() - run_at) > interval '1 second' FROM {} WHERE queue = 'orphan'"
    ).format(sql.Identifier(app.schema, "jobs"))).fetchone() == (True,), 10,
               message="orphan jobs to age")
    report = diagnose(app.dsn, app.schema, Thresholds(max_transaction_age=3600.0,
                                                      max_ready_age=1.0))
    by_name = checks(report)

    assert by_name["workers"].status == PROBLEM
    assert [w["id"] for w in by_name["workers"].details["stale"]] == ["ghost:1:abc"]
    assert "ghost:1:abc" in by_name["workers"].problems[0]
    assert by_name["dead_jobs"].details == {"dead": 1, "by_queue": {"work": 1}}
    assert "1 dead job(s)" in by_name["dead_jobs"].problems[0]
    # The ghost does not count as serving "orphan": its heartbeat is stale.
    assert by_name["unserved_queues"].details["unserved"] == {"orphan": 3}
    assert by_name["unserved_queues"].problems == [
        "queue 'orphan' has 3 ready job(s) and no live worker serves it: "
        "start one with --queues orphan"]
    assert [p for p in by_name["oldest_ready"].problems if "'orphan'" in p]
    assert not [p for p in by_name["oldest_ready"].problems if "'later'" in p]
    assert len(report.problems) >= 4

    # Raise the thresholds and the same state is acceptable where it should be.
    calm = checks(diagnose(app.dsn, app.schema, Thresholds(
        max_transaction_age=3600.0, max_ready_age=3600.0, max_dead=1,
        max_heartbeat_age=600.0)))
    assert calm["dead_jobs"].status == OK and calm["workers"].status == OK
    assert calm["oldest_ready"].status == OK
    assert calm["unserved_queues"].status == PROBLEM  # no threshold makes that fine


def test_paused_queue_with_ready_jobs_is_not_unserved(app: JobQueue,
                                                      admin: psycopg.Connection[Any]) -> None:
    app.enqueue_many([("x", None)] * 2, queue="held", strict=False)
    admin.execute(sql.SQL("INSERT INTO {} (name, paused) VALUES ('held', true)").format(
        sql.Identifier(app.schema, "queues")))
    unserved = checks(diagnose(app.dsn, app.schema, CALM))["unserved_queues"]
    assert unserved.status == OK
    assert unserved.details["paused_with_ready_jobs"] == {"held": 2}


def test_dead_tuples_bloat_and_disabled_autovacuum_then_a_clean_table_passes(
        app: JobQueue, pg_dsn: str, admin: psycopg.Connection[Any]) -> None:
    jobs = sql.Identifier(app.schema, "jobs")
    # Keep autovacuum away so the dead rows stay until the test vacuums.
    admin.execute(sql.SQL("ALTER TABLE {} SET (autovacuum_enabled = false)").format(jobs))
    with psycopg.connect(pg_dsn, autocommit=True) as writer:
        writer.execute(sql.SQL(
            "INSERT INTO {} (task, args) SELECT 'bulk', jsonb_build_object('pad', "
            "repeat('x', 900)) FROM generate_series(1, 20000)").format(jobs))
        writer.execute(sql.SQL("DELETE FROM {}").format(jobs))
    # The writer's session has ended, so its table statistics are published.
    limits = Thresholds(max_transaction_age=3600.0, max_ready_age=3600.0,
                        min_dead_tuples=1000, min_bloat_mb=5.0)

    def found() -> dict[str, Check] | None:
        got = checks(diagnose(app.dsn, app.schema, limits))
        return got if got["dead_tuples"].status == PROBLEM else None

    by_name = wait_until(found, 15, interval=0.2, message="the dead tuples in the stats")
    assert by_name["dead_tuples"].details["dead"] >= 20000
    assert "20,000 dead row versions" in by_name["dead_tuples"].problems[0]
    bloat = by_name["bloat"]
    assert bloat.status == PROBLEM
    assert bloat.details["estimated_waste_bytes"] >= 15 * 2**20
    assert "jobs is bloated" in bloat.problems[0]
    av = by_name["autovacuum"]
    assert av.status == PROBLEM
    assert any("autovacuum_enabled=false" in p for p in av.problems)

    admin.execute(sql.SQL("ALTER TABLE {} RESET (autovacuum_enabled)").format(jobs))
    # The clean state: TRUNCATE rather than VACUUM, because VACUUM may only remove
    # rows that no snapshot can see, and on a shared test server another session's
    # snapshot would keep them (which is exactly what the transactions check reports).
    with psycopg.connect(pg_dsn, autocommit=True) as cleaner:  # its stats publish at exit
        cleaner.execute(sql.SQL("TRUNCATE {}").format(jobs))

    def fixed() -> dict[str, Check] | None:
        got = checks(diagnose(app.dsn, app.schema, limits))
        return got if got["dead_tuples"].status == OK and got["bloat"].status == OK else None

    after = wait_until(fixed, 15, interval=0.2, message="the clean table in the stats")
    assert after["dead_tuples"].details["dead"] == 0
    assert not any("autovacuum_enabled" in p for p in after["autovacuum"].problems)


def test_listen_check_measures_a_real_round_trip(app: JobQueue) -> None:
    listen = checks(diagnose(app.dsn, app.schema, CALM))["listen"]
    assert listen.status == OK
    assert 0 < listen.details["round_trip"] < 5
    assert 0 <= listen.details["notify_queue_usage"] < 0.5


def test_history_rows_without_their_days_partition_are_a_problem(
        app: JobQueue, admin: psycopg.Connection[Any]) -> None:
    assert checks(diagnose(app.dsn, app.schema, CALM))["history"].status == OK
    # As if no leader had run for days: today's partition missing, a success in the default.
    schema = sql.Identifier(app.schema)
    today = admin.execute(sql.SQL(
        "DELETE FROM {}.history_partitions WHERE day = (now() AT TIME ZONE 'UTC')::date "
        "RETURNING name").format(schema)).fetchone()
    assert today is not None
    admin.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(app.schema, today[0])))
    check = checks(diagnose(app.dsn, app.schema, CALM))["history"]
    assert check.status == PROBLEM and "no job_history partition for today" in check.problems[0]

    admin.execute(sql.SQL(  # a success of today: routed to the default partition
        "INSERT INTO {}.job_history (id, queue, task, args, attempts, priority, errors, "
        "created_at, finished_at, expires_at) VALUES (1, 'default', 't', '{{}}', 1, 0, '[]', "
        "now(), now(), now() + interval '1 day')").format(schema))
    check = checks(diagnose(app.dsn, app.schema, CALM))["history"]
    assert check.status == PROBLEM and "1 history row(s) in job_history_default" \
        in check.problems[0]
