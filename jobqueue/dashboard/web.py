"""The dashboard's pages, JSON API and actions, as one Starlette application.

Every page is rendered on the server from Jinja2 templates with autoescaping
on (a job's args are user data: a ``<script>`` in them is shown, never run);
nothing is fetched from elsewhere, and no page needs JavaScript. Each page
reads through the same statements as the CLI, each bounded by a LIMIT or a
cap, so a page costs the same at 100 dead jobs or 100,000.

Actions (replay, purge, cancel, pause, resume) are POST forms carrying a CSRF
field; a replay or purge of a filtered set first shows how many jobs it would
touch and asks again. Each action is logged (``dashboard.action``) with who did
it and from where. ``read_only`` refuses every action and shows no buttons.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from jinja2 import Environment, FileSystemLoader
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.templating import Jinja2Templates

from jobqueue.app import JobQueue
from jobqueue.cli.options import parse_when
from jobqueue.dashboard.security import COOKIE, Auth, is_loopback
from jobqueue.db import admin, fleet
from jobqueue.db.dashboard import dead_count_capped, outcome_series, worker_inflight
from jobqueue.dead import DeadFilter
from jobqueue.doctor import diagnose
from jobqueue.errors import ConfigError, JobNotFound, WorkflowNotFound
from jobqueue.log import get_logger
from jobqueue.outcome import DeadReason
from jobqueue.rows import OutcomeMinute, QueueOverview

#: Rows per list page; a count of dead jobs stops at COUNT_CAP ("10,000+"), the
#: overview's per queue at OVERVIEW_CAP (each counted row is an index probe).
PAGE = 50
COUNT_CAP = 10_000
OVERVIEW_CAP = 1_000
#: The dead-job filters of the pages and forms, as ``jobqueue dead list`` has them.
FILTERS = ("task", "queue", "reason", "error", "since", "until", "include_replayed")
# Autoescaping on for every template: job args, errors and results are user data.
TEMPLATES = Jinja2Templates(env=Environment(
    loader=FileSystemLoader(Path(__file__).parent / "templates"), autoescape=True))


@dataclass(frozen=True)
class Options:
    read_only: bool = False
    title: str = "jobqueue"


def _json(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, default=str)


TEMPLATES.env.filters["pretty"] = _json


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.1f}s"


TEMPLATES.env.filters["age"] = _age


@dataclass(frozen=True)
class Bar:
    """One minute of the chart; heights in percent of the busiest minute."""

    minute: str
    ok: int
    failed: int
    ok_h: float
    failed_h: float


def chart(series: list[OutcomeMinute], now: datetime) -> dict[str, Any]:
    """The last hour as 60 bars (succeeded, failed = retried + dead), for the SVG."""
    start = now.astimezone(timezone.utc).replace(second=0, microsecond=0) \
        - timedelta(minutes=59)
    by_minute = {m.minute.astimezone(timezone.utc): m for m in series}
    counts = []
    for i in range(60):
        at = start + timedelta(minutes=i)
        m = by_minute.get(at)
        counts.append((at.strftime("%H:%M"), m.succeeded if m else 0,
                       (m.retried + m.dead) if m else 0))
    top = max(ok + failed for _, ok, failed in counts) or 1
    bars = [Bar(minute, ok, failed, round(100 * ok / top, 1), round(100 * failed / top, 1))
            for minute, ok, failed in counts]
    return {"bars": bars, "top": top, "total_ok": sum(b.ok for b in bars),
            "total_failed": sum(b.failed for b in bars)}


class Dashboard:
    """The routes over one JobQueue; ``asgi_app`` wraps them with auth."""

    def __init__(self, queue: JobQueue, auth: Auth, options: Options) -> None:
        self.queue = queue
        self.auth = auth
        self.options = options

    # -- helpers ----------------------------------------------------------------------

    def page(self, request: Request, name: str, **context: Any) -> Response:
        who = request.state.who
        response: Response = TEMPLATES.TemplateResponse(request, name, {
            "title": self.options.title, "read_only": self.options.read_only,
            "csrf": self.auth.csrf(who), "who": who, "schema": self.queue.schema,
            "done": request.query_params.get("done"),
            # Mounted under a prefix (api.mount("/admin", ...)), every link carries it.
            "base": request.scope.get("root_path", "").rstrip("/"), **context})
        return response

    def filters(self, params: Any) -> tuple[DeadFilter, dict[str, str]]:
        """The filters of ``jobqueue dead list`` from a query or form, and their text
        (to show again and to carry into the next form); 400 for a bad time."""
        raw = {k: v for k in FILTERS if isinstance(v := params.get(k), str) and v.strip()}
        try:
            since = parse_when(raw["since"], "since") if "since" in raw else None
            until = parse_when(raw["until"], "until") if "until" in raw else None
        except ConfigError as exc:
            raise HTTPException(400, str(exc)) from None
        return DeadFilter(task=raw.get("task"), queue=raw.get("queue"),
                          reason=raw.get("reason"), error=raw.get("error"), since=since,
                          until=until, include_replayed="include_replayed" in raw), raw

    def _job(self, job_id: str) -> Any:
        try:
            return self.queue.job(int(job_id))
        except (JobNotFound, ValueError):
            raise HTTPException(404, f"no job {job_id}") from None

    def overview_data(self) -> dict[str, Any]:
        queues: list[QueueOverview] = self.queue.store.run(
            admin.queue_overview(dead_cap=OVERVIEW_CAP + 1))
        limits = {s.name: s for s in self.queue.queues.settings([q.queue for q in queues])}
        series: list[OutcomeMinute] = self.queue.store.run(outcome_series())
        return {"queues": queues, "limits": limits, "cap": OVERVIEW_CAP,
                "chart": chart(series, datetime.now(timezone.utc))}

    # -- pages ------------------------------------------------------------------------

    def overview(self, request: Request) -> Response:
        return self.page(request, "overview.html", **self.overview_data())

    def running(self, request: Request) -> Response:
        return self.page(request, "running.html", jobs=self.queue.running(limit=PAGE * 2))

    def job(self, request: Request) -> Response:
        return self.page(request, "job.html", job=self._job(request.path_params["job_id"]))

    def dead(self, request: Request) -> Response:
        where, raw = self.filters(request.query_params)
        found = self.queue.store.run(dead_count_capped(where.params(), COUNT_CAP + 1))
        return self.page(request, "dead.html", jobs=self.queue.dead.list(where, limit=PAGE),
                         raw=raw, count=int(found or 0), cap=COUNT_CAP,
                         reasons=[r.value for r in DeadReason], query=urlencode(raw))

    def history(self, request: Request) -> Response:
        task = request.query_params.get("task") or None
        return self.page(request, "history.html", task=task,
                         entries=self.queue.history(task=task, limit=PAGE))

    def workers(self, request: Request) -> Response:
        load = {w.worker: w.running for w in self.queue.store.run(worker_inflight())}
        return self.page(request, "workers.html", load=load,
                         workers=self.queue.store.run(fleet.worker_heartbeats()))

    def workflow(self, request: Request) -> Response:
        try:
            flow = self.queue.workflow(int(request.path_params["workflow_id"]))
        except (WorkflowNotFound, ValueError):
            raise HTTPException(404, f"no workflow {request.path_params['workflow_id']}") \
                from None
        return self.page(request, "workflow.html", flow=flow)

    def cron(self, request: Request) -> Response:
        return self.page(request, "cron.html",
                         schedules=self.queue.store.run(admin.stored_schedules()))

    def doctor(self, request: Request) -> Response:
        report = diagnose(self.queue.dsn, self.queue.schema,
                          pooler=self.queue.settings.pooler)
        return self.page(request, "doctor.html", report=report)

    # -- the JSON API -----------------------------------------------------------------

    def api_overview(self, request: Request) -> Response:
        data = self.overview_data()
        series = {**data["chart"], "bars": [asdict(b) for b in data["chart"]["bars"]]}
        return JSONResponse({"queues": [q.as_dict() for q in data["queues"]],
                             "chart": series})

    def api_running(self, request: Request) -> Response:
        return JSONResponse([j.as_dict() for j in self.queue.running(limit=PAGE * 2)])

    def api_job(self, request: Request) -> Response:
        return JSONResponse(json.loads(json.dumps(
            self._job(request.path_params["job_id"]).as_dict(), default=str)))

    def api_dead(self, request: Request) -> Response:
        where, _ = self.filters(request.query_params)
        return JSONResponse(json.loads(json.dumps(
            [d.as_dict() for d in self.queue.dead.list(where, limit=PAGE)], default=str)))

    def api_history(self, request: Request) -> Response:
        task = request.query_params.get("task") or None
        return JSONResponse(json.loads(json.dumps(
            [asdict(e) for e in self.queue.history(task=task, limit=PAGE)], default=str)))

    # -- actions ----------------------------------------------------------------------

    async def act(self, request: Request) -> Response:
        if self.options.read_only:
            raise HTTPException(403, "the dashboard is read-only")
        form = await request.form()
        who = request.state.who
        if not self.auth.csrf_ok(who, _field(form, "csrf")):
            raise HTTPException(403, "missing or wrong CSRF field: reload the page")
        # The actions run SQL on the sync Store: off the event loop.
        return await run_in_threadpool(self._act, request, request.path_params["action"],
                                       form, who)

    def _act(self, request: Request, action: str, form: FormData, who: str) -> Response:
        # A logger per action (they are rare): one bound at import would keep the
        # logging configuration of that moment.
        log = get_logger("jobqueue.dashboard")
        client = request.client.host if request.client else None
        back = _field(form, "back") or "/"
        if not back.startswith("/") or back.startswith("//"):
            back = "/"
        if action in ("pause", "resume"):
            name = _field(form, "queue")
            if not name:
                raise HTTPException(400, "no queue given")
            (self.queue.queues.pause if action == "pause" else self.queue.queues.resume)(name)
            log.info("dashboard.action", action=action, queue=name, who=who, client=client)
            return _back(request, back, f"queue {name} {action}d")
        if action == "cancel":
            job = self._job(_field(form, "id") or "")
            outcome = self.queue.cancel(job.id)
            log.info("dashboard.action", action="cancel", job_id=job.id, outcome=outcome,
                     who=who, client=client)
            return _back(request, back, f"job {job.id}: {outcome}")
        if action in ("replay", "purge"):
            return self._dead_action(request, action, form, who, client, back, log)
        raise HTTPException(404, f"no action {action!r}")

    def _dead_action(self, request: Request, action: str, form: FormData, who: str,
                     client: str | None, back: str, log: Any) -> Response:
        ids = tuple(int(v) for v in form.getlist("id") if isinstance(v, str) and v.isdigit())
        where, raw = (DeadFilter(ids=ids), {}) if ids else self.filters(form)
        if not where.selects_something or (not ids and set(raw) <= {"include_replayed"}):
            raise HTTPException(400, "select dead jobs by id or by a filter first")
        if not ids and _field(form, "confirm") != "yes":
            # A filtered set: say how many first (a dry run), then ask again.
            request.state.who = who
            return self.page(request, "confirm.html", action=action, raw=raw,
                             count=self.queue.dead.count(where), back=back)
        if action == "replay":
            result = self.queue.dead.replay(where)
            count = len(result.replayed)
            log.info("dashboard.action", action="replay", ids=list(ids) or None,
                     filter=None if ids else _described(where), replayed=result.replayed,
                     skipped=result.skipped, who=who, client=client)
            message = f"replayed {count} dead job{'s' * (count != 1)}"
            if ids and len(ids) == 1 and count == 1:
                return _back(request, f"/jobs/{result.replayed[ids[0]]}", message)
        else:
            count = self.queue.dead.purge(where)
            log.info("dashboard.action", action="purge", ids=list(ids) or None,
                     filter=None if ids else _described(where), purged=count, who=who,
                     client=client)
            message = f"purged {count} dead job{'s' * (count != 1)}"
        return _back(request, back if not back.startswith("/jobs/") else "/dead", message)


def _field(form: FormData, name: str) -> str | None:
    value = form.get(name)
    return value if isinstance(value, str) else None


def _described(where: DeadFilter) -> dict[str, Any]:
    return {k: v for k, v in asdict(where).items() if v not in (None, (), False)}


def _back(request: Request, path: str, message: str) -> Response:
    """303 to ``path`` of this app (under its mount prefix), saying what was done."""
    base = request.scope.get("root_path", "").rstrip("/")
    sep = "&" if "?" in path else "?"
    return RedirectResponse(f"{base}{path}{sep}{urlencode({'done': message})}",
                            status_code=303)


class _Guard(BaseHTTPMiddleware):
    """Who the caller is, or a refusal (401, or 403 on an open non-loopback socket)."""

    def __init__(self, app: Any, auth: Auth) -> None:
        super().__init__(app)
        self.auth = auth

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        auth = self.auth
        if not auth.required:
            server = request.scope.get("server")
            if not is_loopback(server[0] if server else None):
                return PlainTextResponse(
                    "the dashboard has no authentication configured and answers only on a "
                    "loopback address", status_code=403)
            request.state.who = "local"
            return await call_next(request)
        given = request.query_params.get("token")
        if auth.token is not None and given is not None:
            if given != auth.token:
                return PlainTextResponse("wrong token", status_code=401)
            # Trade the token in the URL for a cookie, and drop it from the URL.
            rest = urlencode([(k, v) for k, v in request.query_params.multi_items()
                              if k != "token"])
            response = RedirectResponse(request.url.path + (f"?{rest}" if rest else ""), 303)
            # (request.url.path is the full path, mount prefix included.)
            response.set_cookie(COOKIE, auth.cookie_value(), httponly=True, samesite="strict",
                                secure=request.url.scheme == "https")
            return response
        who = auth.identify(request.headers.get("authorization"), request.cookies.get(COOKIE))
        if who is None:
            headers = {"WWW-Authenticate": 'Basic realm="jobqueue"'} if auth.user else {}
            return PlainTextResponse("authentication required", status_code=401,
                                     headers=headers)
        request.state.who = who
        return await call_next(request)


def asgi_app(queue: JobQueue, *, token: str | None = None, read_only: bool = False,
             auth: Auth | None = None, title: str = "jobqueue") -> Starlette:
    """The dashboard of ``queue`` as an ASGI app, to serve or to mount in your own.

    Authentication: ``token`` (else ``$JOBQUEUE_DASHBOARD_TOKEN``), or basic auth
    from ``$JOBQUEUE_DASHBOARD_USER``/``_PASSWORD``; with neither it answers only
    on loopback addresses. ``read_only`` refuses every action.
    """
    guard = auth or Auth.from_env(token)
    d = Dashboard(queue, guard, Options(read_only=read_only, title=title))
    routes = [
        Route("/", d.overview), Route("/running", d.running),
        Route("/jobs/{job_id}", d.job), Route("/dead", d.dead),
        Route("/history", d.history), Route("/workers", d.workers), Route("/cron", d.cron),
        Route("/workflows/{workflow_id}", d.workflow),
        Route("/doctor", d.doctor),
        Route("/api/overview", d.api_overview), Route("/api/running", d.api_running),
        Route("/api/jobs/{job_id}", d.api_job), Route("/api/dead", d.api_dead),
        Route("/api/history", d.api_history),
        Route("/actions/{action}", d.act, methods=["POST"]),
    ]
    return Starlette(routes=routes, middleware=[Middleware(_Guard, auth=guard)])
