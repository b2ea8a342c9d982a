"""``jobqueue embedded``: look after the embedded default Postgres."""

from __future__ import annotations

import typer

from jobqueue import embedded
from jobqueue.config import redact_dsn

app = typer.Typer(help="The embedded Postgres used when no DSN is configured.",
                  no_args_is_help=True)


@app.command("dsn")
def dsn_cmd() -> None:
    """Start the embedded Postgres if needed and print its DSN."""
    typer.echo(redact_dsn(embedded.dsn()))


@app.command("stop")
def stop_cmd() -> None:
    """Stop the embedded Postgres (its data stays in the data directory)."""
    stopped = embedded.stop()
    typer.echo("stopped" if stopped else "not running")


@app.command("path")
def path_cmd() -> None:
    """Print the embedded Postgres data directory."""
    typer.echo(str(embedded.data_dir()))
