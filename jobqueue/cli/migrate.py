"""``jobqueue migrate``: apply the schema through Alembic, or print its SQL."""

from __future__ import annotations

from typing import Annotated

import typer

from jobqueue.cli.options import Dsn, Schema, plain_app
from jobqueue.config import describe_dsn
from jobqueue.db import migrate as migrations


def register(app: typer.Typer) -> None:
    @app.command("migrate")
    def migrate_cmd(
        dsn: Dsn = None,
        schema: Schema = None,
        sql: Annotated[bool, typer.Option("--sql", help="Print the SQL instead of running it.")]
        = False,
    ) -> None:
        """Create or upgrade the jobqueue tables (idempotent)."""
        queue = plain_app(dsn, schema)
        if sql:
            typer.echo(migrations.sql_script(queue.schema))
            return
        queue.migrate()
        where = "embedded Postgres" if queue.uses_embedded else describe_dsn(queue.dsn)
        typer.echo(f"schema {queue.schema!r} is at revision {migrations.head_revision()} "
                   f"({where})")
