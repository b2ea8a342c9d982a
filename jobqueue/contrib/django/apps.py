"""The Django app (``"jobqueue.contrib.django"`` in INSTALLED_APPS): its commands."""

from __future__ import annotations

from django.apps import AppConfig


class JobQueueConfig(AppConfig):  # type: ignore[misc]  # Django ships no types
    name = "jobqueue.contrib.django"
    label = "jobqueue"
    verbose_name = "jobqueue"
