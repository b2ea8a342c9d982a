"""Migrations: what `jobqueue.db.migrate` builds, and how it lives beside other migrations.

Covers the schema an upgrade creates (tables, the claim and dedup indexes, the
autovacuum settings), that upgrading again changes nothing, that an
application's own Alembic history is left alone, that concurrent upgrades
serialise on the advisory lock, that downgrade undoes the schema, that the
offline SQL (`jobqueue migrate --sql`) builds the same schema as the online
upgrade, and that schema names needing quotes work end to end.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from alembic import command
from alembic.config import Config
from psycopg import sql
from psycopg.conninfo import make_conninfo
from sqlalchemy import create_engine
from sqlalchemy.pool import NullPool

from jobqueue import JobQueue
from jobqueue.db import migrate
from tests.helpers import count, wait_until, worker_thread

JOBQUEUE_TABLES = {"jobs", "dead_jobs", "workers", "cron", migrate.VERSION_TABLE}


# -- helpers -----------------------------------------------------------------------------


def tables(conn: psycopg.Connection[Any], schema: str) -> set[str]:
    rows = conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = %s",
                        (schema,)).fetchall()
    return {r[0] for r in rows}


def regclass(conn: psycopg.Connection[Any], schema: str, table: str) -> int | None:
    """The table's oid, or None; to_regclass never raises on a missing table."""
    name = sql.Identifier(schema, table).as_string(conn)
    row = conn.execute("SELECT to_regclass(%s)::oid", (name,)).fetchone()
    assert row is not None
    return row[0]


def version_rows(conn: psycopg.Connection[Any], schema: str, table: str) -> list[str]:
    rows = conn.execute(sql.SQL("SELECT version_num FROM {}").format(
        sql.Identifier(schema, table))).fetchall()
    return [r[0] for r in rows]


def catalog(conn: psycopg.Connection[Any], schema: str) -> dict[str, Any]:
    """Everything about ``schema``'s tables that a migration decides, schema name removed."""
    columns = conn.execute("""
        SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
               pg_get_expr(d.adbin, d.adrelid), a.attidentity
        FROM pg_attribute a
        JOIN pg_class c ON c.oid = a.attrelid
        LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
        WHERE c.relnamespace = %s::regnamespace AND c.relkind = 'r'
          AND a.attnum > 0 AND NOT a.attisdropped
        ORDER BY 1, 2""", (sql.Identifier(schema).as_string(conn),)).fetchall()
    indexes = conn.execute("""
        SELECT tablename, indexname, replace(indexdef, quote_ident(%s) || '.', 'S.')
        FROM pg_indexes WHERE schemaname = %s ORDER BY 1, 2""", (schema, schema)).fetchall()
    constraints = conn.execute("""
        SELECT c.relname, k.conname, pg_get_constraintdef(k.oid)
        FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid
        WHERE c.relnamespace = %s::regnamespace ORDER BY 1, 2""",
        (sql.Identifier(schema).as_string(conn),)).fetchall()
    options = conn.execute("""
        SELECT relname, reloptions FROM pg_class
        WHERE relnamespace = %s::regnamespace AND relkind = 'r' ORDER BY 1""",
        (sql.Identifier(schema).as_string(conn),)).fetchall()
    return {"columns": columns, "indexes": indexes, "constraints": constraints,
            "options": options}


def alembic_config(script_location: Path | str, **attributes: Any) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(script_location))
    cfg.attributes.update(attributes)
    return cfg


def engine_for(dsn: str) -> Any:
    return create_engine("postgresql+psycopg://", creator=lambda: psycopg.connect(dsn),
                         poolclass=NullPool)


@pytest.fixture
def extra_schemas(pg_dsn: str) -> Iterator[Callable[[str], str]]:
    """Hands out further schema names (any spelling) and drops them afterwards."""
    names: list[str] = []

    def make(prefix: str) -> str:
        name = f"{prefix}{uuid.uuid4().hex[:10]}"
        names.append(name)
        return name

    yield make
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("SET lock_timeout = '10s'")
        for name in names:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(
                sql.Identifier(name)))


# -- what an upgrade builds ----------------------------------------------------------------


def test_upgrade_creates_tables_indexes_and_version_inside_the_schema(
        pg_dsn: str, schema: str, admin: psycopg.Connection[Any]) -> None:
    assert migrate.current_revision(admin, schema) is None
    migrate.upgrade(pg_dsn, schema)

    assert tables(admin, schema) >= JOBQUEUE_TABLES
    assert version_rows(admin, schema, migrate.VERSION_TABLE) == [migrate.head_revision()]
    assert migrate.current_revision(admin, schema) == migrate.head_revision()
    # jobqueue never creates Alembic's default version table, in its schema or elsewhere.
    assert regclass(admin, schema, "alembic_version") is None

    indexes = dict(admin.execute(
        "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = %s AND tablename = 'jobs'",
        (schema,)).fetchall())
    assert "(queue, priority, run_at, id)" in indexes["jobs_ready_idx"]
    assert "WHERE (state = 'queued'::text)" in indexes["jobs_ready_idx"]
    assert indexes["jobs_unique_key_idx"].startswith("CREATE UNIQUE INDEX")
    assert "WHERE (unique_key IS NOT NULL)" in indexes["jobs_unique_key_idx"]

    row = admin.execute("SELECT reloptions FROM pg_class WHERE oid = %s",
                        (regclass(admin, schema, "jobs"),)).fetchone()
    assert row is not None
    options = dict(opt.split("=", 1) for opt in row[0])
    assert options["autovacuum_vacuum_scale_factor"] == "0"
    assert options["autovacuum_vacuum_cost_delay"] == "0"
    assert int(options["autovacuum_vacuum_threshold"]) > 0


def test_upgrading_twice_is_a_no_op_that_keeps_data(
        pg_dsn: str, app: JobQueue, admin: psycopg.Connection[Any]) -> None:
    job_id = app.enqueue("anything", {"n": 1}, strict=False)
    before = {t: regclass(admin, app.schema, t) for t in tables(admin, app.schema)}

    migrate.upgrade(pg_dsn, app.schema)
    app.migrate()

    assert version_rows(admin, app.schema, migrate.VERSION_TABLE) == [migrate.head_revision()]
    # The same tables (none dropped and recreated, none added), the same row.
    assert {t: regclass(admin, app.schema, t) for t in tables(admin, app.schema)} == before
    assert count(admin, app.schema, "jobs", "id = %s AND args = '{\"n\": 1}'", (job_id,)) == 1
    assert count(admin, app.schema, "jobs") == 1


# -- beside the application's own Alembic history --------------------------------------------

APP_ENV = '''\
"""The Alembic environment of a host application (test double, but real Alembic)."""
from alembic import context

config = context.config
context.configure(connection=config.attributes["connection"],
                  version_table_schema=config.attributes["app_schema"])
with context.begin_transaction():
    context.run_migrations()
'''

APP_REVISION = '''\
"""{doc}"""
import sqlalchemy as sa
from alembic import context, op

revision = "{rev}"
down_revision = {down!r}
branch_labels = None
depends_on = None


def upgrade():
    op.create_table("{table}", sa.Column("id", sa.Integer, primary_key=True),
                    schema=context.config.attributes["app_schema"])


def downgrade():
    op.drop_table("{table}", schema=context.config.attributes["app_schema"])
'''


def write_app_migrations(root: Path) -> Path:
    (root / "versions").mkdir(parents=True)
    (root / "env.py").write_text(APP_ENV)
    (root / "versions" / "app_0001.py").write_text(APP_REVISION.format(
        doc="users", rev="app_0001", down=None, table="users"))
    (root / "versions" / "app_0002.py").write_text(APP_REVISION.format(
        doc="orders", rev="app_0002", down="app_0001", table="orders"))
    return root


def app_upgrade(dsn: str, location: Path, app_schema: str, revision: str) -> None:
    engine = engine_for(dsn)
    try:
        with engine.begin() as connection:
            connection.exec_driver_sql(
                "CREATE SCHEMA IF NOT EXISTS " + sql.Identifier(app_schema).as_string(None))
            command.upgrade(alembic_config(location, connection=connection,
                                           app_schema=app_schema), revision)
    finally:
        engine.dispose()


@pytest.mark.parametrize("same_schema", [True, False], ids=["same-schema", "own-schema"])
def test_application_alembic_history_is_left_alone(
        pg_dsn: str, schema: str, extra_schemas: Callable[[str], str],
        admin: psycopg.Connection[Any], tmp_path: Path, same_schema: bool) -> None:
    # The application's `alembic_version` lives in `schema` (its stand-in for public,
    # which tests must not touch: they share one database).
    location = write_app_migrations(tmp_path / "app_migrations")
    app_upgrade(pg_dsn, location, schema, "app_0001")
    assert version_rows(admin, schema, "alembic_version") == ["app_0001"]

    jq_schema = schema if same_schema else extra_schemas("jqt_jq_")
    migrate.upgrade(pg_dsn, jq_schema)

    assert version_rows(admin, schema, "alembic_version") == ["app_0001"]
    assert version_rows(admin, jq_schema, migrate.VERSION_TABLE) == [migrate.head_revision()]
    if not same_schema:
        assert regclass(admin, schema, migrate.VERSION_TABLE) is None
        assert regclass(admin, jq_schema, "alembic_version") is None
    assert regclass(admin, schema, "users") is not None

    # Both histories keep moving on their own.
    app_upgrade(pg_dsn, location, schema, "head")
    migrate.upgrade(pg_dsn, jq_schema)
    assert version_rows(admin, schema, "alembic_version") == ["app_0002"]
    assert version_rows(admin, jq_schema, migrate.VERSION_TABLE) == [migrate.head_revision()]
    assert regclass(admin, schema, "orders") is not None
    assert tables(admin, jq_schema) >= JOBQUEUE_TABLES


# -- concurrent upgrades ---------------------------------------------------------------------

UPGRADE_IN_CHILD = "import sys; from jobqueue.db import migrate; migrate.upgrade(*sys.argv[1:3])"


def lock_waiters(conn: psycopg.Connection[Any], application_name: str) -> int:
    row = conn.execute("""
        SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
        WHERE l.locktype = 'advisory' AND NOT l.granted AND a.application_name = %s""",
        (application_name,)).fetchone()
    assert row is not None
    return int(row[0])


def test_two_processes_upgrading_a_fresh_schema_serialise_and_both_succeed(
        pg_dsn: str, schema: str, admin: psycopg.Connection[Any]) -> None:
    # Hold the migration lock so both children are provably inside upgrade() at the
    # same time, waiting; then let them race for it.
    tag = f"jq_migrate_race_{uuid.uuid4().hex[:8]}"
    dsn = make_conninfo(pg_dsn, application_name=tag)
    admin.execute("SELECT pg_advisory_lock(%s)", (migrate.migrate_lock_key(schema),))
    children: list[subprocess.Popen[str]] = []
    try:
        children = [subprocess.Popen([sys.executable, "-c", UPGRADE_IN_CHILD, dsn, schema],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                    for _ in range(2)]
        wait_until(lambda: lock_waiters(admin, tag) == 2, timeout=60,
                   message="both upgrades to wait on the migration lock")
        # Nothing happened before the lock: the schema does not exist yet.
        row = admin.execute("SELECT to_regnamespace(%s)", (schema,)).fetchone()
        assert row is not None and row[0] is None
    except BaseException:
        for child in children:
            child.kill()
        raise
    finally:
        admin.execute("SELECT pg_advisory_unlock(%s)", (migrate.migrate_lock_key(schema),))

    for child in children:
        _, err = child.communicate(timeout=120)
        assert child.returncode == 0, err
    assert tables(admin, schema) >= JOBQUEUE_TABLES
    assert version_rows(admin, schema, migrate.VERSION_TABLE) == [migrate.head_revision()]


def test_two_threads_upgrading_at_once_both_succeed(
        pg_dsn: str, schema: str, admin: psycopg.Connection[Any]) -> None:
    # Alembic's command state is process-global: without serialisation inside
    # migrate.upgrade, two threads deadlock (each runs the other's env.py).
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def run() -> None:
        try:
            start.wait(10)
            migrate.upgrade(pg_dsn, schema)
        except BaseException as exc:  # noqa: BLE001 - reported by the test thread
            errors.append(exc)

    threads = [threading.Thread(target=run, daemon=True) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads), "concurrent upgrades deadlocked"
    assert errors == []
    assert version_rows(admin, schema, migrate.VERSION_TABLE) == [migrate.head_revision()]
    assert tables(admin, schema) >= JOBQUEUE_TABLES


# -- downgrade and offline SQL ---------------------------------------------------------------


def jobqueue_alembic(pg_dsn: str, schema: str, action: Callable[[Config], None]) -> None:
    """Run an Alembic command on jobqueue's own environment, as env.py documents it."""
    engine = engine_for(pg_dsn)
    try:
        with engine.connect() as connection:
            action(alembic_config(migrate.migrations_dir(), connection=connection,
                                  jobqueue_schema=schema))
    finally:
        engine.dispose()


def test_downgrade_to_base_removes_the_tables_and_upgrade_restores_them(
        pg_dsn: str, migrated: str, admin: psycopg.Connection[Any]) -> None:
    jobqueue_alembic(pg_dsn, migrated, lambda cfg: command.downgrade(cfg, "base"))

    # Alembic keeps its (now empty) version table; every jobqueue table is gone.
    assert tables(admin, migrated) == {migrate.VERSION_TABLE}
    assert version_rows(admin, migrated, migrate.VERSION_TABLE) == []
    assert migrate.current_revision(admin, migrated) is None

    migrate.upgrade(pg_dsn, migrated)
    assert tables(admin, migrated) >= JOBQUEUE_TABLES
    assert migrate.current_revision(admin, migrated) == migrate.head_revision()


def test_offline_sql_builds_the_same_schema_as_upgrade(
        pg_dsn: str, migrated: str, extra_schemas: Callable[[str], str],
        admin: psycopg.Connection[Any]) -> None:
    offline = extra_schemas("jqt_sql_")
    script = migrate.sql_script(offline)
    assert "pg_advisory" not in script  # a plain script: nothing session-specific
    # What a `jobqueue migrate --sql | psql` user does: run the script as it is.
    admin.execute(script.encode())

    assert tables(admin, offline) >= JOBQUEUE_TABLES
    online = catalog(admin, migrated)
    assert online["columns"] and online["indexes"] and online["constraints"]
    assert catalog(admin, offline) == online
    # jobqueue recognises the result as migrated, and a later upgrade has nothing to do.
    assert migrate.current_revision(admin, offline) == migrate.head_revision()
    migrate.upgrade(pg_dsn, offline)
    assert version_rows(admin, offline, migrate.VERSION_TABLE) == [migrate.head_revision()]


# -- schema names that need quoting -----------------------------------------------------------


def test_schema_name_with_quote_space_and_capitals_migrates_enqueues_and_claims(
        pg_dsn: str, extra_schemas: Callable[[str], str],
        admin: psycopg.Connection[Any]) -> None:
    weird = extra_schemas('Jq Weird"Name_')
    migrate.upgrade(pg_dsn, weird)
    assert tables(admin, weird) >= JOBQUEUE_TABLES
    assert migrate.current_revision(admin, weird) == migrate.head_revision()
    # Unquoted, the name would have been folded or split: only the exact one exists.
    row = admin.execute("SELECT array_agg(nspname) FROM pg_namespace WHERE nspname ILIKE %s",
                        ("%" + weird[-10:],)).fetchone()
    assert row == ([weird],)

    # JobQueue() only accepts plain names; past that check, every statement the
    # library runs (enqueue, LISTEN, claim, ack, heartbeat) must quote the schema.
    app = JobQueue(pg_dsn, schema="placeholder")
    app.settings = dataclasses.replace(app.settings, schema=weird)
    ran: list[int] = []
    lock = threading.Lock()

    @app.task()
    def record(i: int) -> None:
        with lock:
            ran.append(i)

    try:
        with worker_thread(app):
            app.enqueue_many([("record", {"i": i}) for i in range(3)])
            wait_until(lambda: count(admin, weird, "jobs") == 0 and len(ran) == 3,
                       timeout=30, message="3 jobs to run in the oddly named schema")
    finally:
        app.close()
    assert sorted(ran) == [0, 1, 2]
    assert count(admin, weird, "dead_jobs") == 0


def test_mixed_case_schema_runs_jobs_end_to_end(
        pg_dsn: str, extra_schemas: Callable[[str], str],
        admin: psycopg.Connection[Any]) -> None:
    # Capitals are valid in a jobqueue schema name and must survive quoting
    # everywhere: migration, enqueue, NOTIFY channel, claim, ack.
    name = extra_schemas("JqMixed_")
    app = JobQueue(pg_dsn, schema=name)
    ran: list[int] = []
    lock = threading.Lock()

    @app.task()
    def record(i: int) -> None:
        with lock:
            ran.append(i)

    try:
        app.migrate()
        assert admin.execute("SELECT to_regnamespace(%s) IS NOT NULL",
                             (sql.Identifier(name).as_string(admin),)).fetchone() == (True,)
        assert admin.execute("SELECT to_regnamespace(%s)",
                             (name.lower(),)).fetchone() == (None,)
        with worker_thread(app):
            app.enqueue_many([("record", {"i": i}) for i in range(5)])
            wait_until(lambda: count(admin, name, "jobs") == 0 and len(ran) == 5,
                       timeout=30, message="5 jobs to run in the mixed-case schema")
    finally:
        app.close()
    assert sorted(ran) == [0, 1, 2, 3, 4]
    assert count(admin, name, "dead_jobs") == 0

