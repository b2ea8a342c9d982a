"""``jobqueue dashboard`` as a person runs it: the refusals, then a real server."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import httpx
import pytest

from tests.acceptance.support import JOBQUEUE, REPO, Cli, assert_one_error_line, closed_port
from tests.helpers import wait_until

TOKEN = "cli-token-of-enough-length"


def test_a_wide_address_without_authentication_is_refused(cli: Cli, migrated: str) -> None:
    refused = cli("dashboard", "--host", "0.0.0.0", timeout=30)
    assert_one_error_line(refused, "0.0.0.0", "--token")
    short = cli("dashboard", "--host", "0.0.0.0", "--token", "short", timeout=30)
    assert_one_error_line(short, "at least 16")


@pytest.fixture
def server(env: dict[str, str], migrated: str) -> Iterator[str]:
    port = closed_port()
    proc = subprocess.Popen([*JOBQUEUE, "dashboard", "--port", str(port), "--token", TOKEN],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return httpx.get(url + "/", timeout=1).status_code == 401
        except httpx.TransportError:
            assert proc.poll() is None, proc.communicate()
            return False

    try:
        wait_until(up, 30, interval=0.1, message="the dashboard to answer")
        yield url
    finally:
        proc.terminate()
        proc.wait(15)


def test_the_server_answers_with_its_token_only(server: str) -> None:
    assert httpx.get(server + "/api/overview").status_code == 401
    answer = httpx.get(server + "/api/overview", headers={"Authorization": f"Bearer {TOKEN}"})
    assert answer.status_code == 200 and answer.json()["queues"] == []
    page = httpx.get(server + f"/?token={TOKEN}", follow_redirects=True)
    assert page.status_code == 200 and "Overview" in page.text
