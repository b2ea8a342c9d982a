"""The dashboard over HTTP against real Postgres: every page, every action, the rules.

Starlette's TestClient calls the ASGI app in-process; ``server`` in the scope
is what the app sees as the socket it was reached on, so the loopback rule is
tested by giving it a non-loopback one.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from starlette.testclient import TestClient
from structlog.testing import capture_logs

from jobqueue import JobQueue
from jobqueue.dashboard import asgi_app
from jobqueue.dashboard.security import Auth
from jobqueue.dead import DeadFilter
from jobqueue.log import configure
from jobqueue.testing import drain
from tests.helpers import count

XSS = "<script>alert('pwned')</script>"
TOKEN = "a-token-of-enough-length"


@pytest.fixture
def jobs(app: JobQueue) -> JobQueue:
    @app.task
    def ok(n: int) -> int:
        return n * 2

    @app.task(max_attempts=1)
    def boom(note: str) -> None:
        raise ValueError(f"boom: {note}")

    @app.task(queue="mail")
    def send(to: str) -> None: ...

    return app


def client(app: JobQueue, host: str = "127.0.0.1", **options: Any) -> TestClient:
    return TestClient(asgi_app(app, **options), base_url=f"http://{host}")


@pytest.fixture
def web(jobs: JobQueue) -> Iterator[TestClient]:
    with client(jobs, auth=Auth()) as c:
        yield c


def csrf(page: str) -> str:
    found = re.search(r'name="csrf" value="([0-9a-f]+)"', page)
    assert found, "the page has no CSRF field"
    return found.group(1)


def dead_ids(conn: psycopg.Connection[Any], schema: str) -> list[int]:
    return [int(r[0]) for r in conn.execute(
        f'SELECT id FROM "{schema}".dead_jobs WHERE replayed_at IS NULL ORDER BY id')]


def test_every_page_renders_with_what_the_queue_holds(jobs: JobQueue, web: TestClient) -> None:
    kept = jobs.enqueue("ok", {"n": 21})
    failed = jobs.enqueue("boom", {"note": "first"})
    drain(jobs)
    jobs.enqueue("send", {"to": "ada@example.com"}, delay=3600)
    jobs.cron("hourly", "0 * * * *", "ok", {"n": 1})
    pages = {path: web.get(path) for path in (
        "/", "/running", f"/jobs/{kept}", f"/jobs/{failed}", "/dead", "/history", "/workers",
        "/cron", "/doctor")}
    for path, response in pages.items():
        assert response.status_code == 200, (path, response.text[:500])
        assert response.headers["content-type"].startswith("text/html")
    overview = pages["/"].text
    assert 'id="queue-default"' in overview and 'id="queue-mail"' in overview
    assert "Outcomes per minute" in overview and "<svg" in overview
    assert "1 ok · 1 failed" in overview  # the hour's outcomes, from job_counts
    assert "42" in pages[f"/jobs/{kept}"].text  # the result
    detail = pages[f"/jobs/{failed}"].text
    assert "ValueError: boom: first" in detail and "Traceback" in detail
    assert f'href="/jobs/{failed}"' in pages["/dead"].text
    assert f'href="/jobs/{kept}"' in pages["/history"].text
    assert "Doctor" in pages["/doctor"].text and "autovacuum" in pages["/doctor"].text
    assert web.get("/jobs/999999").status_code == 404
    assert web.get("/jobs/nope").status_code == 404
    assert 'id="version"' not in detail  # an unversioned task's jobs are all version 1
    newer = jobs.enqueue("ok", {"n": 1}, version=2)
    assert '<dd id="version">2</dd>' in web.get(f"/jobs/{newer}").text


def test_the_json_api(jobs: JobQueue, web: TestClient) -> None:
    kept = jobs.enqueue("ok", {"n": 2})
    dead = jobs.enqueue("boom", {"note": "api"})
    drain(jobs)
    overview = web.get("/api/overview").json()
    assert {q["queue"] for q in overview["queues"]} == {"default"}
    assert len(overview["chart"]["bars"]) == 60
    assert overview["chart"]["total_ok"] == 1 and overview["chart"]["total_failed"] == 1
    assert web.get(f"/api/jobs/{kept}").json()["result"] == 4
    assert [d["id"] for d in web.get("/api/dead").json()] == [dead]
    assert [d["id"] for d in web.get("/api/dead", params={"task": "ok"}).json()] == []
    assert [h["id"] for h in web.get("/api/history").json()] == [kept]
    assert web.get("/api/running").json() == []


def test_args_are_escaped_everywhere_they_are_shown(jobs: JobQueue, web: TestClient) -> None:
    dead = jobs.enqueue("boom", {"note": XSS})
    drain(jobs)
    for path in (f"/jobs/{dead}", "/dead", f"/dead?error={XSS}"):
        page = web.get(path).text
        assert XSS not in page, path
        assert "&lt;script&gt;" in page, path


def test_replay_one_dead_job_from_its_page_and_see_it_run(
        jobs: JobQueue, web: TestClient, conn: psycopg.Connection[Any]) -> None:
    dead = jobs.enqueue("boom", {"note": "once"})
    drain(jobs)
    page = web.get(f"/jobs/{dead}").text
    done = web.post("/actions/replay", data={"csrf": csrf(page), "id": str(dead),
                                             "back": f"/jobs/{dead}"})
    assert done.status_code == 200  # followed the redirect to the new job's page
    new_id = int(str(done.url).split("/jobs/")[1].split("?")[0])
    assert new_id != dead and "replayed 1 dead job" in done.text
    assert dead_ids(conn, jobs.schema) == []
    assert jobs.job(dead).replayed_as == new_id
    assert jobs.job(new_id).state == "queued"


def test_a_filtered_replay_and_purge_show_a_dry_run_count_first(
        jobs: JobQueue, web: TestClient, conn: psycopg.Connection[Any]) -> None:
    for i in range(3):
        jobs.enqueue("boom", {"note": f"n{i}"})
    drain(jobs)
    token = csrf(web.get("/dead").text)
    asked = web.post("/actions/purge", data={"csrf": token, "task": "boom", "back": "/dead"})
    assert asked.status_code == 200 and "Purge 3 dead jobs?" in asked.text
    assert "dry run" in asked.text
    assert len(dead_ids(conn, jobs.schema)) == 3  # nothing changed yet
    done = web.post("/actions/purge", data={"csrf": token, "task": "boom", "confirm": "yes",
                                            "back": "/dead"})
    assert "purged 3 dead jobs" in done.text
    assert count(conn, jobs.schema, "dead_jobs") == 0
    # With no filter at all there is nothing to confirm: "all" is not a click away.
    refused = web.post("/actions/replay", data={"csrf": token, "confirm": "yes"})
    assert refused.status_code == 400


def test_pause_resume_and_cancel(jobs: JobQueue, web: TestClient) -> None:
    queued = jobs.enqueue("ok", {"n": 1})
    token = csrf(web.get("/").text)
    paused = web.post("/actions/pause", data={"csrf": token, "queue": "default", "back": "/"})
    assert '<span class="badge paused">paused</span>' in paused.text
    assert [q.paused for q in jobs.stats()] == [True]
    resumed = web.post("/actions/resume", data={"csrf": token, "queue": "default"})
    assert "queue default resumed" in resumed.text and [q.paused for q in jobs.stats()] == [False]
    cancelled = web.post("/actions/cancel", data={"csrf": token, "id": str(queued),
                                                  "back": f"/jobs/{queued}"})
    assert cancelled.status_code == 200
    assert jobs.job(queued).state == "cancelled"


def test_actions_need_the_csrf_field_and_are_logged_with_who(
        jobs: JobQueue, web: TestClient) -> None:
    jobs.enqueue("ok", {"n": 1})
    assert web.post("/actions/pause", data={"queue": "default"}).status_code == 403
    assert web.post("/actions/pause", data={"queue": "default", "csrf": "0" * 64}) \
        .status_code == 403
    assert [q.paused for q in jobs.stats()] == [False]
    token = csrf(web.get("/").text)
    configure()  # capture_logs swaps processors only; keep jobqueue's level filter around it
    with capture_logs() as logs:
        web.post("/actions/pause", data={"queue": "default", "csrf": token})
    events = [e for e in logs if e["event"] == "dashboard.action"]
    assert [(e["action"], e["queue"], e["who"], e["client"]) for e in events] == [
        ("pause", "default", "local", "testclient")]


def test_read_only_shows_no_buttons_and_refuses_actions(jobs: JobQueue) -> None:
    dead = jobs.enqueue("boom", {"note": "ro"})
    drain(jobs)
    with client(jobs, auth=Auth(), read_only=True) as ro:
        page = ro.get(f"/jobs/{dead}").text
        assert "read-only" in page and "/actions/" not in page
        assert "/actions/" not in ro.get("/").text and "/actions/" not in ro.get("/dead").text
        # Refused before the CSRF field is even looked at.
        assert ro.post("/actions/replay", data={"id": str(dead)}).status_code == 403
    assert jobs.job(dead).state == "dead"


def test_without_authentication_only_loopback_is_served(jobs: JobQueue) -> None:
    with client(jobs, host="10.1.2.3", auth=Auth()) as wide:
        refused = wide.get("/")
        assert refused.status_code == 403 and "loopback" in refused.text
        assert wide.get("/api/overview").status_code == 403


def test_a_token_is_required_and_a_browser_trades_it_for_a_cookie(jobs: JobQueue) -> None:
    with client(jobs, host="10.1.2.3", auth=Auth(token=TOKEN)) as c:
        assert c.get("/").status_code == 401
        assert c.get("/", headers={"Authorization": "Bearer wrong-token-wrong-token"}) \
            .status_code == 401
        assert c.get("/api/overview", headers={"Authorization": f"Bearer {TOKEN}"}) \
            .status_code == 200
        assert c.get("/?token=wrong").status_code == 401
        landed = c.get(f"/dead?token={TOKEN}&task=x")
        assert landed.status_code == 200 and str(landed.url).endswith("/dead?task=x")
        assert TOKEN not in c.cookies.get("jobqueue_dashboard", "")
        assert c.get("/").status_code == 200  # the cookie now


def test_basic_auth(jobs: JobQueue) -> None:
    auth = Auth(user="ops", password="s3cret-pass")
    with client(jobs, host="10.1.2.3", auth=auth) as c:
        denied = c.get("/")
        assert denied.status_code == 401 and "Basic" in denied.headers["www-authenticate"]
        good = base64.b64encode(b"ops:s3cret-pass").decode()
        bad = base64.b64encode(b"ops:nope").decode()
        assert c.get("/", headers={"Authorization": f"Basic {bad}"}).status_code == 401
        page = c.get("/", headers={"Authorization": f"Basic {good}"})
        assert page.status_code == 200 and "ops" in page.text


def test_bad_auth_settings_are_one_clear_error() -> None:
    from jobqueue.errors import ConfigError

    with pytest.raises(ConfigError, match="at least 16"):
        Auth(token="short")
    with pytest.raises(ConfigError, match="both"):
        Auth(user="ops")


def test_mounted_under_a_prefix_every_link_and_redirect_keeps_it(jobs: JobQueue) -> None:
    from starlette.applications import Starlette
    from starlette.routing import Mount

    dead = jobs.enqueue("boom", {"note": "mounted"})
    drain(jobs)
    host = Starlette(routes=[Mount("/admin", app=asgi_app(jobs, token=TOKEN))])
    with TestClient(host, base_url="http://127.0.0.1") as c:
        page = c.get(f"/admin/?token={TOKEN}")
        assert str(page.url).endswith("/admin/") and page.status_code == 200
        links = re.findall(r'(?:href|action)="([^"]+)"', page.text)
        assert links and all(link.startswith("/admin/") for link in links), links
        detail = c.get(f"/admin/jobs/{dead}")
        replayed = c.post("/admin/actions/replay", data={
            "csrf": csrf(detail.text), "id": str(dead), "back": f"/jobs/{dead}"})
        assert replayed.status_code == 200 and "/admin/jobs/" in str(replayed.url)
        assert jobs.job(dead).replayed_as is not None


def test_the_readme_mount_example_runs_as_written(pg_dsn: str, migrated: str,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.readme import example

    monkeypatch.setenv("JOBQUEUE_DSN", pg_dsn)
    monkeypatch.setenv("JOBQUEUE_SCHEMA", migrated)
    namespace: dict[str, Any] = {"__name__": "readme_dashboard"}
    exec(compile(example("Dashboard"), "README.md#Dashboard", "exec"), namespace)
    try:
        with TestClient(namespace["api"], base_url="http://127.0.0.1") as c:
            assert c.get("/jobs-admin/").status_code == 401
            answer = c.get("/jobs-admin/api/overview", headers={
                "Authorization": "Bearer a-long-random-token-from-your-vault"})
            assert answer.status_code == 200 and answer.json()["queues"] == []
    finally:
        namespace["queue"].close()


def test_a_workflow_nodes_page_links_its_jobs(jobs: JobQueue, web: TestClient) -> None:
    from jobqueue import chain

    flow = jobs.enqueue_workflow(chain(jobs.sig("ok", {"n": 1}), jobs.sig("boom", {"note": "w"}),
                                       jobs.sig("ok", {"n": 3})))
    drain(jobs)
    first, failed, doomed = flow.ids
    assert "ValueError: boom: w" in web.get(f"/jobs/{failed}").text
    detail = web.get(f"/jobs/{first}").text
    assert f'href="/workflows/{flow.id}"' in detail
    page = web.get(f"/workflows/{flow.id}").text
    assert "failed" in page
    for node in flow.ids:
        assert f'href="/jobs/{node}"' in page
    assert "dependency_failed" in web.get(f"/jobs/{doomed}").text
    assert web.get("/workflows/424242").status_code == 404


def test_the_overview_caps_its_dead_count_while_stats_stay_exact(
        jobs: JobQueue, web: TestClient, admin: psycopg.Connection[Any]) -> None:
    from psycopg import sql

    admin.execute(sql.SQL(
        "INSERT INTO {} (id, queue, task, args, priority, run_at, attempts, max_attempts, "
        "errors, created_at, reason) SELECT g, 'bulk', 'boom', '{{}}', 0, now(), 1, 1, '[]', "
        "now(), 'exhausted' FROM generate_series(1, 10005) AS g").format(
        sql.Identifier(jobs.schema, "dead_jobs")))
    assert [(q.queue, q.dead) for q in jobs.stats()] == [("bulk", 10005)]
    page = web.get("/").text
    assert re.search(r'<a href="/dead\?queue=bulk">1,000\+</a>', page)
    assert "10,000+" in web.get("/dead").text


def test_dead_jobs_filter_by_time_and_replayed_as_the_cli_does(
        jobs: JobQueue, web: TestClient) -> None:
    first = jobs.enqueue("boom", {"note": "a"})
    drain(jobs)
    jobs.dead.replay(DeadFilter(ids=(first,)))
    drain(jobs)  # the replay fails too: a second dead job
    second = jobs.job(first).replayed_as
    listed = web.get("/api/dead", params={"since": "1h"}).json()
    assert [d["id"] for d in listed] == [second]
    replayed_too = web.get("/api/dead", params={"since": "1h", "include_replayed": "1"}).json()
    assert sorted(d["id"] for d in replayed_too) == sorted([first, second])
    assert web.get("/api/dead", params={"until": "1h"}).json() == []
    page = web.get("/dead", params={"since": "1h", "include_replayed": "1"}).text
    assert 'value="1h"' in page and "checked" in page
    bad = web.get("/dead", params={"since": "yesterday-ish"})
    assert bad.status_code == 400 and "neither an ISO time nor an age" in bad.text
