"""`jobqueue migrate`: applies the schema, is a no-op the second time, prints SQL with --sql."""

from __future__ import annotations

import re
from typing import Any

import psycopg

from jobqueue.db.migrate import head_revision
from tests.acceptance.support import Cli, closed_port, dsn_with

# At least these; later revisions may add more.
CORE_TABLES = {"jobs", "dead_jobs", "workers", "cron", "jobqueue_alembic_version"}


def tables(admin: psycopg.Connection[Any], schema: str) -> set[str]:
    rows = admin.execute("SELECT tablename FROM pg_tables WHERE schemaname = %s",
                         (schema,)).fetchall()
    return {r[0] for r in rows}


def test_migrate_applies_then_is_a_no_op(cli: Cli, admin: psycopg.Connection[Any],
                                         schema: str) -> None:
    assert tables(admin, schema) == set()
    out = cli.ok("migrate")
    assert schema in out and head_revision() in out
    created = tables(admin, schema)
    assert created >= CORE_TABLES

    # A job enqueued between the runs must survive the second one untouched.
    cli.ok("enqueue", "survivor", "--args", '{"n": 1}')
    before = admin.execute(f'SELECT id, task, args, run_at FROM "{schema}".jobs').fetchall()

    again = cli.ok("migrate")
    assert head_revision() in again
    assert tables(admin, schema) == created
    assert admin.execute(f'SELECT id, task, args, run_at FROM "{schema}".jobs').fetchall() \
        == before
    versions = admin.execute(
        f'SELECT version_num FROM "{schema}".jobqueue_alembic_version').fetchall()
    assert versions == [(head_revision(),)]


def test_migrate_sql_prints_the_schema_without_touching_the_database(
        cli: Cli, admin: psycopg.Connection[Any], schema: str, pg_dsn: str) -> None:
    # Pointed at a port where nothing listens: --sql must not even try to connect.
    unreachable = dsn_with(pg_dsn, host="127.0.0.1", port=str(closed_port()))
    out = cli.ok("migrate", "--sql", "--dsn", unreachable)
    for table in ("jobs", "dead_jobs", "workers", "cron"):
        assert re.search(rf'CREATE TABLE "?{schema}"?\.{table} \(', out), table
    assert f'CREATE SCHEMA IF NOT EXISTS "{schema}"' in out
    assert "jobqueue_alembic_version" in out
    # With the real DSN too, nothing is created.
    cli.ok("migrate", "--sql")
    assert admin.execute("SELECT count(*) FROM pg_namespace WHERE nspname = %s",
                         (schema,)).fetchone() == (0,)


def test_migrate_sql_follows_the_schema_flag(cli: Cli) -> None:
    out = cli.ok("migrate", "--sql", "--schema", "billing_jobs")
    assert 'CREATE TABLE "billing_jobs".jobs (' in out
    assert 'CREATE TABLE "billing_jobs".dead_jobs (' in out
    assert "jqt_" not in out  # the env's schema is overridden, not mixed in
