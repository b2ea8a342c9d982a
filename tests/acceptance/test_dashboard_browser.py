"""The dashboard in a real Chromium (Debian's, driven by Playwright), on a real server.

uvicorn serves ``asgi_app`` on a free loopback port in a thread; the browser
loads the overview, opens a dead job, replays it, sees it run and leave the
DLQ, and pauses a queue. Screenshots of the overview and the job page go to
the test's output directory (and to ``$JOBQUEUE_SCREENSHOTS`` when set, which
is how the README's screenshot is made). Without Chromium the test is skipped,
except where ``JOBQUEUE_REQUIRE_BROWSER=1`` (CI) makes that a failure.
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from jobqueue import JobQueue
from jobqueue.dashboard import asgi_app
from jobqueue.dashboard.security import Auth
from jobqueue.testing import drain
from tests.helpers import count, wait_until

CHROMIUM = ("/usr/bin/chromium", "/usr/bin/chromium-browser")


def chromium() -> str:
    for path in CHROMIUM:
        if os.path.exists(path):
            return path
    found = shutil.which("chromium")
    if found:
        return found
    if os.environ.get("JOBQUEUE_REQUIRE_BROWSER") == "1":
        pytest.fail("chromium is not installed (apt-get install -y chromium)")
    pytest.skip("chromium is not installed (apt-get install -y chromium)")


@pytest.fixture
def served(app: JobQueue) -> Iterator[str]:
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(asgi_app(app, auth=Auth()), host="127.0.0.1",
                                           port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, name="dashboard", daemon=True)
    thread.start()
    wait_until(lambda: server.started, 15, message="the dashboard server to start")
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(15)


@pytest.fixture
def browser() -> Iterator[Any]:
    executable = chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=executable, headless=True)
        try:
            yield launched
        finally:
            launched.close()


def shoot(page: Any, tmp_path: Path, name: str) -> Path:
    target = tmp_path / name
    page.screenshot(path=str(target), full_page=True)
    extra = os.environ.get("JOBQUEUE_SCREENSHOTS")
    if extra:
        Path(extra).mkdir(parents=True, exist_ok=True)
        shutil.copy(target, Path(extra) / name)
    print(f"screenshot: {target}")
    return target


def test_replay_a_dead_job_in_the_browser_and_pause_a_queue(
        app: JobQueue, served: str, browser: Any, tmp_path: Path,
        conn: psycopg.Connection[Any]) -> None:
    calls = {"n": 0}

    @app.task(max_attempts=1)
    def charge(order: int, note: str) -> str:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("card declined by the test gateway")
        return f"charged order {order}"

    @app.task
    def welcome(email: str) -> None: ...

    for i in range(3):
        app.enqueue(welcome, {"email": f"user{i}@example.com"})
    dead_id = app.enqueue(charge, {"order": 7, "note": "<script>window.pwned=1</script>"})
    drain(app)
    app.enqueue(welcome, {"email": "later@example.com"}, delay=600)
    assert count(conn, app.schema, "dead_jobs") == 1

    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.goto(served + "/")
    assert page.locator("#queue-default").is_visible()
    shoot(page, tmp_path, "dashboard-overview.png")

    page.click("text=Dead jobs")
    page.click(f'a[href="/jobs/{dead_id}"]')
    assert page.locator("h1").inner_text().startswith(f"Job {dead_id}")
    # The args are shown as text: the script in them never ran.
    assert "<script>window.pwned=1</script>" in page.locator("#args").inner_text()
    assert page.evaluate("window.pwned") is None
    shoot(page, tmp_path, "dashboard-job.png")

    page.click("#replay")
    page.wait_for_selector("text=replayed 1 dead job")
    new_id = int(page.url.split("/jobs/")[1].split("?")[0])
    assert new_id != dead_id
    assert drain(app).succeeded == 1
    page.reload()
    assert "succeeded" in page.locator("h1").inner_text()
    assert "charged order 7" in page.locator("#result").inner_text()
    page.goto(served + "/dead")
    assert page.locator("text=No dead jobs match.").is_visible()
    assert count(conn, app.schema, "dead_jobs", "replayed_at IS NULL") == 0

    page.goto(served + "/")
    page.locator("#queue-default button", has_text="Pause").click()
    page.wait_for_selector("#queue-default .badge.paused")
    assert [q.paused for q in app.stats() if q.queue == "default"] == [True]
    page.close()
