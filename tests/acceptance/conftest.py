"""Fixtures for acceptance tests: the CLI and worker processes, pointed at the test schema.

Every command runs as ``python -m jobqueue ...`` from the repository root (so
``--app tests.apps.recorder:app`` imports), with ``JOBQUEUE_DSN`` and
``JOBQUEUE_SCHEMA`` in its environment, exactly as a user would set them up.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from jobqueue import JobQueue
from tests.acceptance import support
from tests.faults import Db


@pytest.fixture
def env(pg_dsn: str, schema: str, tmp_path: Path) -> dict[str, str]:
    return support.cli_env(pg_dsn, schema, tmp_path / "home")


@pytest.fixture
def cli(env: dict[str, str]) -> support.Cli:
    return support.Cli(env)


@pytest.fixture
def workers(env: dict[str, str], tmp_path: Path) -> Iterator[support.Workers]:
    fleet = support.Workers(env, tmp_path)
    try:
        yield fleet
    finally:
        fleet.cleanup()


@pytest.fixture
def producer(pg_dsn: str, migrated: str, admin: psycopg.Connection[Any]) -> Iterator[JobQueue]:
    """The test's own JobQueue over the test schema, with the effects table the worker
    apps record into; it enqueues by task name (strict=False), as a producer that does
    not import the worker's code would."""
    support.create_effects(admin, migrated)
    queue = JobQueue(pg_dsn, schema=migrated)
    yield queue
    queue.close()


@pytest.fixture
def db(pg_dsn: str, migrated: str, admin: psycopg.Connection[Any]) -> Iterator[Db]:
    """A view of the test schema, with the effects table the fault apps record into."""
    support.create_effects(admin, migrated)
    view = Db(pg_dsn, migrated)
    yield view
    view.close()
