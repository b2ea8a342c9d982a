"""``jobqueue doctor``: check the queue's and the database's health; exit 1 on any problem."""

from __future__ import annotations

from typing import Annotated

import typer

from jobqueue.cli.options import Dsn, Json, Schema, plain_app
from jobqueue.cli.output import emit_json
from jobqueue.doctor import OK, PROBLEM, Thresholds, diagnose

_MARK = {OK: "ok", PROBLEM: "PROBLEM", "skipped": "skipped"}


def register(app: typer.Typer) -> None:
    @app.command("doctor")
    def doctor_cmd(
        dsn: Dsn = None,
        schema: Schema = None,
        as_json: Json = False,
        max_transaction_age: Annotated[float, typer.Option(
            "--max-transaction-age", min=0,
            help="A transaction open longer than this (seconds) is a problem.")] = 300.0,
        max_heartbeat_age: Annotated[float, typer.Option(
            "--max-heartbeat-age", min=0,
            help="A worker silent for longer than this (seconds) is a problem.")] = 30.0,
        max_dead: Annotated[int, typer.Option(
            "--max-dead", min=0, help="More dead jobs than this is a problem.")] = 0,
        max_ready_age: Annotated[float, typer.Option(
            "--max-ready-age", min=0,
            help="A ready job waiting longer than this (seconds) is a problem.")] = 300.0,
        max_dead_tuple_ratio: Annotated[float, typer.Option(
            "--max-dead-tuple-ratio", min=0, max=1,
            help="Dead row versions of jobs above this share are a problem...")] = 0.2,
        min_dead_tuples: Annotated[int, typer.Option(
            "--min-dead-tuples", min=0, help="...once there are at least this many.")]
        = 10_000,
        max_bloat_ratio: Annotated[float, typer.Option(
            "--max-bloat-ratio", min=0, max=1,
            help="Estimated dead space of jobs and its indexes above this share is a "
                 "problem...")] = 0.5,
        min_bloat_mb: Annotated[float, typer.Option(
            "--min-bloat-mb", min=0, help="...once it is at least this many MB.")] = 64.0,
        listen_timeout: Annotated[float, typer.Option(
            "--listen-timeout", min=0.1,
            help="How long the LISTEN round trip may take, seconds.")] = 5.0,
    ) -> None:
        """Check the queue's health: migrations, vacuum and bloat of jobs, long
        transactions and the xmin horizon, LISTEN/NOTIFY, workers, dead jobs and
        unserved queues. Exits 1 if anything is a problem, each explained in one line."""
        jq = plain_app(dsn, schema)
        thresholds = Thresholds(
            max_transaction_age=max_transaction_age, max_heartbeat_age=max_heartbeat_age,
            max_dead=max_dead, max_ready_age=max_ready_age,
            max_dead_tuple_ratio=max_dead_tuple_ratio, min_dead_tuples=min_dead_tuples,
            max_bloat_ratio=max_bloat_ratio, min_bloat_mb=min_bloat_mb,
            listen_timeout=listen_timeout)
        report = diagnose(jq.dsn, jq.schema, thresholds, jq.settings.connect_timeout,
                          jq.settings.pooler, jq.settings.listen_dsn)
        if as_json:
            emit_json(report.as_dict())
        else:
            count = len(report.problems)
            verdict = "healthy" if report.ok else f"{count} problem{'s' * (count != 1)}"
            typer.echo(f"jobqueue doctor: {verdict} (schema {report.schema} on "
                       f"{report.database})")
            width = max(len(c.name) for c in report.checks)
            for check in report.checks:
                mark = _MARK.get(check.status, check.status)
                if check.problems:
                    for line in check.problems:
                        typer.echo(f"{mark:<8} {check.name:<{width}}  {line}")
                else:
                    typer.echo(f"{mark:<8} {check.name:<{width}}  {check.summary}")
        if not report.ok:
            raise typer.Exit(1)
