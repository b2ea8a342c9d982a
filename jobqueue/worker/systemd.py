"""systemd integration: ``sd_notify`` over ``$NOTIFY_SOCKET``.

Under ``Type=notify`` systemd waits for ``READY=1`` before it considers the
worker started, shows ``STATUS=`` in ``systemctl status``, restarts a worker
whose ``WATCHDOG=1`` pings stop (a wedged event loop), and learns of a
graceful stop from ``STOPPING=1``. The protocol is one datagram per message on
a Unix socket, so it is done here directly. Without ``$NOTIFY_SOCKET`` every
call is a no-op.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Mapping

from jobqueue.worker.service import Service


class Notifier:
    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        # A leading "@" names a socket in the abstract namespace.
        self.address = "\0" + address[1:] if address.startswith("@") else address
        self.watchdog_interval: float | None = None
        usec = env.get("WATCHDOG_USEC")
        pid = env.get("WATCHDOG_PID")
        if usec and usec.isdigit() and (not pid or pid == str(os.getpid())):
            # systemd's advice: ping at half the watchdog timeout.
            self.watchdog_interval = int(usec) / 1_000_000 / 2

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def notify(self, *fields: str) -> bool:
        """Send ``KEY=value`` fields in one datagram; False when not under systemd."""
        if not self.address:
            return False
        payload = "\n".join(fields).encode()
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            try:
                sock.sendto(payload, self.address)
            except OSError:
                return False
        return True


class SystemdService(Service):
    """Sends WATCHDOG=1 and STATUS= while the worker's loop is alive."""

    name = "systemd"

    def __init__(self, notifier: Notifier, status: Callable[[], str],
                 status_interval: float = 5.0) -> None:
        super().__init__()
        self.notifier = notifier
        self.status = status
        self.interval = min(notifier.watchdog_interval or status_interval, status_interval)

    async def run(self) -> None:
        while not self.stopping:
            fields = [f"STATUS={self.status()}"]
            if self.notifier.watchdog_interval is not None:
                fields.append("WATCHDOG=1")
            self.notifier.notify(*fields)
            await self.sleep(self.interval)
