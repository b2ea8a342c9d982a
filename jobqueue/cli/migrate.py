"""``jobqueue migrate``: apply the schema through Alembic, or print its SQL."""

from __future__ import annotations

from typing import Annotated

import typer

from jobqueue.cli.options import Dsn, Schema, plain_app
from jobqueue.config import describe_dsn
from jobqueue.db import admin
from jobqueue.db import migrate as migrations


def register(app: typer.Typer) -> None:
    @app.command("migrate")
    def migrate_cmd(
        dsn: Dsn = None,
        schema: Schema = None,
        sql: Annotated[bool, typer.Option("--sql", help="Print the SQL instead of running it.")]
        = False,
        producers: Annotated[list[str] | None, typer.Option(
            "--grant-producer", metavar="ROLE",
            help="Also grant an existing ROLE what enqueue needs (repeatable).")] = None,
        workers: Annotated[list[str] | None, typer.Option(
            "--grant-worker", metavar="ROLE",
            help="Also grant an existing ROLE what a worker needs (repeatable).")] = None,
        readers: Annotated[list[str] | None, typer.Option(
            "--grant-results", metavar="ROLE",
            help="Also grant an existing ROLE what app.job() and app.result() need: reading "
                 "jobs, dead jobs and history (repeatable).")] = None,
    ) -> None:
        """Create or upgrade the jobqueue tables (idempotent), and grant roles their rights."""
        queue = plain_app(dsn, schema)
        grants = ([("producer", r) for r in producers or []]
                  + [("worker", r) for r in workers or []]
                  + [("results", r) for r in readers or []])
        if sql:
            typer.echo(migrations.sql_script(queue.schema))
            if grants:
                typer.echo(admin.grant_script(queue.schema, grants))
            return
        queue.migrate()
        where = "embedded Postgres" if queue.uses_embedded else describe_dsn(queue.dsn)
        typer.echo(f"schema {queue.schema!r} is at revision {migrations.head_revision()} "
                   f"({where})")
        for kind, role in grants:
            queue.grant(role, kind=kind)
            typer.echo(f"granted {kind} rights on schema {queue.schema!r} to {role}")
