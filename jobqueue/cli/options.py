"""Options shared by every command, and how they become a JobQueue."""

from __future__ import annotations

import importlib
import os
import re
import sys
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from typing import Annotated

import typer

from jobqueue.app import JobQueue
from jobqueue.config import resolve_dsn, resolve_listen_dsn, resolve_pooler, resolve_schema
from jobqueue.errors import ConfigError

Dsn = Annotated[
    str | None,
    typer.Option("--dsn", envvar="JOBQUEUE_DSN", show_envvar=True,
                 help="PostgreSQL DSN; default: the embedded Postgres."),
]
Schema = Annotated[
    str | None,
    typer.Option("--schema", envvar="JOBQUEUE_SCHEMA", show_envvar=True,
                 help="Schema holding the jobqueue tables (default: jobqueue)."),
]
Pooler = Annotated[
    str | None,
    typer.Option("--pooler", envvar="JOBQUEUE_POOLER", show_envvar=True,
                 help="What sits between jobqueue and Postgres: none, or transaction "
                      "(PgBouncer in transaction mode; default: none)."),
]
ListenDsn = Annotated[
    str | None,
    typer.Option("--listen-dsn", envvar="JOBQUEUE_LISTEN_DSN", show_envvar=True,
                 help="A direct connection (bypassing the pooler) for LISTEN; without "
                      "it a worker behind a transaction pooler polls."),
]
Json = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
AppPath = Annotated[
    str | None,
    typer.Option("--app", envvar="JOBQUEUE_APP", show_envvar=True,
                 help="Your JobQueue as 'package.module:attribute'."),
]


def plain_app(dsn: str | None, schema: str | None) -> JobQueue:
    return JobQueue(dsn, schema=schema)


def load_app(path: str, dsn: str | None = None, schema: str | None = None,
             pooler: str | None = None, listen_dsn: str | None = None) -> JobQueue:
    """Import ``module:attribute``; --dsn/--schema/--pooler/--listen-dsn, when given,
    override the app's own."""
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
    if pooler:
        app.settings = replace(app.settings, pooler=resolve_pooler(pooler))
    if listen_dsn:
        app.settings = replace(app.settings, listen_dsn=resolve_listen_dsn(listen_dsn))
    return app


_AGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)?\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_age(text: str, flag: str) -> float:
    """``90``, ``30s``, ``15m``, ``2h``, ``7d``, ``1w`` -> seconds."""
    match = _AGE.match(text)
    if not match:
        raise ConfigError(f"{flag}: {text!r} is not an age such as 30s, 15m, 2h, 7d")
    return float(match.group(1)) * _UNITS[match.group(2) or "s"]


def parse_when(text: str, flag: str) -> datetime:
    """An ISO timestamp (UTC if no offset) or an age meaning "that long ago"."""
    if _AGE.match(text):
        return datetime.now(timezone.utc) - timedelta(seconds=parse_age(text, flag))
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(f"{flag}: {text!r} is neither an ISO time nor an age like 2h") from None
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)
