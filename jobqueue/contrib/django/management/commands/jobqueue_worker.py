"""``manage.py jobqueue_worker``: ``jobqueue worker`` for a TASKS backend's tasks.

It takes the very flags of ``jobqueue worker`` (they are handed to it as given)
plus ``--backend ALIAS``; without ``--queues`` it works the backend's QUEUES.
"""

from __future__ import annotations

import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from jobqueue.contrib.django.compat import task_backends

#: Django's own options, which ManagementUtility has applied already.
DJANGO_OPTIONS = ("--settings", "--pythonpath")


def worker_argv(argv: list[str]) -> list[str]:
    """``jobqueue worker`` arguments from this command's (the ones after its name)."""
    rest: list[str] = []
    alias = "default"
    items = iter(argv)
    for item in items:
        name, eq, value = item.partition("=")
        if name == "--backend":
            alias = value if eq else next(items, "default")
        elif name in DJANGO_OPTIONS:
            if not eq:
                next(items, None)
        else:
            rest.append(item)
    try:
        backend = task_backends[alias]
    except Exception as exc:  # noqa: BLE001 - Django's error for a bad alias varies
        raise CommandError(f"--backend {alias!r}: {exc}") from None
    if not any(a.partition("=")[0] in ("--queues", "-q") for a in rest):
        rest += ["--queues", ",".join(sorted(backend.queues))]
    return ["worker", "--app", f"jobqueue.contrib.django.queues:{alias}", *rest]


class Command(BaseCommand):  # type: ignore[misc]  # Django ships no types
    help = ("Run a jobqueue worker for a TASKS backend's Django tasks: the flags of "
            "`jobqueue worker --help`, and --backend ALIAS (default: default).")

    def run_from_argv(self, argv: list[str]) -> None:
        # Typer parses the flags, so they are exactly those of `jobqueue worker`.
        from jobqueue.cli import main

        try:
            args = worker_argv(argv[2:])
        except CommandError as exc:
            sys.stderr.write(f"error: {exc}\n")
            sys.exit(1)
        main(args)

    def handle(self, *args: Any, **options: Any) -> None:
        # Only call_command() gets here: a worker runs until a signal and then
        # exits the process, which is no function call to make from Python.
        raise CommandError("jobqueue_worker runs as `manage.py jobqueue_worker [flags]`; "
                           "from Python use the backend's app: "
                           "task_backends[alias].app.worker(...)")
