"""Logging: structlog, JSON lines when not on a TTY (journald, containers), console on a TTY.

Handlers and services take a bound logger once; per-job events go through the
filtering bound logger, whose disabled levels are no-op methods, so a debug
line on the hot path costs one attribute lookup when debug is off.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import structlog

_configured = False


def configure(level: str | None = None, json: bool | None = None, force: bool = False) -> None:
    """Configure structlog for a jobqueue process (worker, CLI).

    A host application that configured structlog itself keeps its setup:
    jobqueue only configures when nobody has, or when ``force`` is given.
    """
    global _configured
    if not force and (_configured or structlog.is_configured()):
        return
    name = (level or os.environ.get("JOBQUEUE_LOG_LEVEL") or "info").upper()
    numeric = logging.getLevelName(name)
    if not isinstance(numeric, int):
        numeric = logging.INFO
    if json is None:
        json = not sys.stderr.isatty()
    renderer: Any = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=True)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info if json else structlog.dev.set_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        # One write per line (text and newline together; print() makes two):
        # forked handler processes share this stderr, and a line written in two
        # pieces can get another process's line between them.
        logger_factory=structlog.WriteLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    _configured = True


def get_logger(name: str, **initial: Any) -> Any:
    return structlog.get_logger(name).bind(logger=name, **initial)
