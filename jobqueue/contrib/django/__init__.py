"""jobqueue as a django.tasks backend (``django_tasks`` before Django 6).

``TASKS = {"default": {"BACKEND": "jobqueue.contrib.django.JobQueueBackend",
"OPTIONS": {"schema": "jobqueue"}}}`` and ``"jobqueue.contrib.django"`` in
INSTALLED_APPS (for the ``jobqueue_worker`` and ``jobqueue_migrate`` commands).
"""

from __future__ import annotations

from typing import Any

__all__ = ["JobQueueBackend"]


def __getattr__(name: str) -> Any:
    # Lazy: importing the app package must not import Django's settings-bound modules.
    if name == "JobQueueBackend":
        from jobqueue.contrib.django.backend import JobQueueBackend

        return JobQueueBackend
    raise AttributeError(name)
