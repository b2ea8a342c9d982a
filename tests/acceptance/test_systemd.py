"""The worker speaks sd_notify: READY, then WATCHDOG pings, then STOPPING.

A real worker process is started with ``$NOTIFY_SOCKET`` pointing at a
datagram socket this test owns, exactly as systemd would do for a
``Type=notify`` unit, and is stopped with SIGTERM.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jobqueue.worker.systemd import Notifier

ROOT = Path(__file__).resolve().parents[2]


def _receive_until(sock: socket.socket, wanted: str, deadline: float) -> list[str]:
    messages: list[str] = []
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            data = sock.recv(4096).decode()
        except TimeoutError:
            break
        messages.append(data)
        if wanted in data:
            return messages
    raise AssertionError(f"no {wanted!r} within the deadline; got {messages!r}")


def test_worker_sends_ready_watchdog_stopping_in_order(pg_dsn: str, migrated: str,
                                                       tmp_path: Path) -> None:
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        env = {**os.environ, "NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "400000",
               "JOBQUEUE_DSN": pg_dsn, "JOBQUEUE_SCHEMA": migrated}
        env.pop("WATCHDOG_PID", None)
        log = (tmp_path / "worker.log").open("w")
        proc = subprocess.Popen(
            [sys.executable, "-c", "from jobqueue.cli import main; main()", "worker",
             "--app", "tests.apps.notify_app:app"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 30
            before_ready = _receive_until(sock, "READY=1", deadline)
            assert not any("WATCHDOG=1" in m or "STOPPING=1" in m for m in before_ready)
            # WATCHDOG_USEC=0.4 s: pings every 0.2 s; wait for two of them.
            pings = 0
            while pings < 2:
                pings += sum("WATCHDOG=1" in m for m in
                             _receive_until(sock, "WATCHDOG=1", time.monotonic() + 5))
            proc.send_signal(signal.SIGTERM)
            after = _receive_until(sock, "STOPPING=1", time.monotonic() + 30)
            assert proc.wait(30) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.close()
        status = [m for m in before_ready + after if "STATUS=" in m]
        assert status, "the worker sent no STATUS= line"
        # Nothing follows STOPPING that would tell systemd the worker is healthy again.
        sock.settimeout(0.5)
        leftovers: list[str] = []
        try:
            while True:
                leftovers.append(sock.recv(4096).decode())
        except TimeoutError:
            pass
        assert not any("READY=1" in m or "WATCHDOG=1" in m for m in leftovers), leftovers


def test_notifier_is_a_no_op_without_socket() -> None:
    notifier = Notifier(environ={})
    assert not notifier.enabled
    assert notifier.notify("READY=1") is False
    assert notifier.watchdog_interval is None


def test_notifier_reads_watchdog_and_abstract_address() -> None:
    notifier = Notifier(environ={"NOTIFY_SOCKET": "@jobqueue-test", "WATCHDOG_USEC": "10000000",
                                 "WATCHDOG_PID": str(os.getpid())})
    assert notifier.address == "\0jobqueue-test"
    assert notifier.watchdog_interval == pytest.approx(5.0)
    other_pid = Notifier(environ={"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "10000000",
                                  "WATCHDOG_PID": "1"})
    assert other_pid.watchdog_interval is None
