"""``jobqueue dashboard``: the web dashboard and its JSON API, served by uvicorn."""

from __future__ import annotations

from typing import Annotated

import typer

from jobqueue.cli.options import Dsn, Schema, plain_app
from jobqueue.cli.output import fail


def register(app: typer.Typer) -> None:
    @app.command("dashboard")
    def dashboard_cmd(
        dsn: Dsn = None,
        schema: Schema = None,
        host: Annotated[str, typer.Option(
            "--host", help="Address to listen on; anything but loopback needs --token or "
                           "basic auth.")] = "127.0.0.1",
        port: Annotated[int, typer.Option("--port", min=0, max=65535)] = 8787,
        token: Annotated[str | None, typer.Option(
            "--token", envvar="JOBQUEUE_DASHBOARD_TOKEN", show_envvar=True,
            help="Bearer token (16+ characters); a browser opens /?token=... once. Or set "
                 "JOBQUEUE_DASHBOARD_USER and JOBQUEUE_DASHBOARD_PASSWORD for basic auth.")]
        = None,
        read_only: Annotated[bool, typer.Option(
            "--read-only", help="Pages only: no replay, purge, cancel, pause or resume.")]
        = False,
    ) -> None:
        """Serve the dashboard until Ctrl-C (pip install 'jobqueue[dashboard]')."""
        try:
            import uvicorn

            from jobqueue.dashboard import asgi_app
            from jobqueue.dashboard.security import Auth, is_loopback
        except ImportError as exc:
            raise fail(f"the dashboard needs its extra: pip install 'jobqueue[dashboard]' "
                       f"({exc.name} is missing)") from None
        auth = Auth.from_env(token)
        if not auth.required and not is_loopback(host):
            raise fail(f"--host {host} is not a loopback address: give --token (or set "
                       "JOBQUEUE_DASHBOARD_USER and JOBQUEUE_DASHBOARD_PASSWORD)")
        queue = plain_app(dsn, schema)
        print(f"jobqueue dashboard for schema {queue.schema!r} on http://{host}:{port}/"
              f"{' (read-only)' if read_only else ''}", flush=True)
        uvicorn.run(asgi_app(queue, auth=auth, read_only=read_only), host=host, port=port,
                    log_level="warning")
