"""Options shared by every command, and how they become a JobQueue."""

from __future__ import annotations

import importlib
import os
import sys
from dataclasses import replace
from typing import Annotated

import typer

from jobqueue.app import JobQueue
from jobqueue.config import resolve_dsn, resolve_schema
from jobqueue.errors import ConfigError

Dsn = Annotated[
    str | None,
    typer.Option("--dsn", envvar="JOBQUEUE_DSN", show_envvar=True,
                 help="PostgreSQL DSN; default: the embedded Postgres."),
]
Schema = Annotated[
    str | None,
    typer.Option("--schema", envvar="JOBQUEUE_SCHEMA", show_envvar=True,
                 help="Schema holding the jobqueue tables. [default: jobqueue]"),
]
Json = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
AppPath = Annotated[
    str | None,
    typer.Option("--app", envvar="JOBQUEUE_APP", show_envvar=True,
                 help="Your JobQueue as 'package.module:attribute'."),
]


def plain_app(dsn: str | None, schema: str | None) -> JobQueue:
    return JobQueue(dsn, schema=schema)


def load_app(path: str, dsn: str | None = None, schema: str | None = None) -> JobQueue:
    """Import ``module:attribute``; --dsn/--schema, when given, override the app's own."""
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"--app must look like 'package.module:app', got {path!r}")
    # Like uvicorn and celery: modules in the current directory are importable.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise ConfigError(f"cannot import {module_name!r} for --app: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - any import-time error of the user's module
        raise ConfigError(f"importing {module_name!r} for --app failed: "
                          f"{type(exc).__name__}: {exc}") from None
    try:
        app = getattr(module, attr)
    except AttributeError:
        raise ConfigError(f"module {module_name!r} has no attribute {attr!r}") from None
    if not isinstance(app, JobQueue):
        raise ConfigError(f"{path!r} is a {type(app).__name__}, not a jobqueue.JobQueue")
    if dsn:
        app.settings = replace(app.settings, dsn=resolve_dsn(dsn))
    if schema:
        app.settings = replace(app.settings, schema=resolve_schema(schema))
    return app
