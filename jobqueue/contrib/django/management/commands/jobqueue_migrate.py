"""``manage.py jobqueue_migrate``: create or upgrade a TASKS backend's jobqueue schema."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from jobqueue.contrib.django.compat import task_backends


class Command(BaseCommand):  # type: ignore[misc]  # Django ships no types
    help = "Create or upgrade the jobqueue schema of a TASKS backend (idempotent)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--backend", default="default", help="The TASKS alias.")

    def handle(self, *args: Any, **options: Any) -> None:
        app = task_backends[options["backend"]].app
        app.migrate()
        self.stdout.write(f"jobqueue schema {app.schema!r} is up to date")
