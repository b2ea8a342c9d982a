"""The ``jobqueue`` command line (Typer), one module per command group.

:func:`main` is the console entry point: it turns every error a person can
cause (bad DSN, unreachable or unmigrated database, bad JSON, bad --app) into
one ``error:`` line and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import sys

import psycopg
import typer

from jobqueue.cli import (
    control,
    cron,
    dashboard,
    dead,
    demo,
    doctor,
    embedded,
    enqueue,
    jobs,
    migrate,
    stats,
    worker,
    workflows,
)
from jobqueue.errors import JobQueueError

app = typer.Typer(
    name="jobqueue",
    help="A PostgreSQL-native transactional job queue.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
for module in (migrate, worker, enqueue, stats, control, doctor, demo, dashboard):
    module.register(app)
app.add_typer(cron.app, name="cron")
app.add_typer(dead.app, name="dead")
app.add_typer(embedded.app, name="embedded")
app.add_typer(jobs.job_app, name="job")
app.add_typer(jobs.history_app, name="history")
app.add_typer(workflows.app, name="workflow")


def main(argv: list[str] | None = None) -> None:
    try:
        app(args=argv)  # standalone: usage errors and typer.Exit end the process here
    except JobQueueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    except psycopg.Error as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"error: database: {first}", file=sys.stderr)
        sys.exit(1)
