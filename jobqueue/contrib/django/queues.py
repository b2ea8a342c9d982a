"""Each ``TASKS`` backend's JobQueue as a module attribute: ``queues:<alias>``.

``jobqueue worker --app jobqueue.contrib.django.queues:default`` (and every
other ``--app`` command: stats, dead, doctor) then works on a Django project
given ``DJANGO_SETTINGS_MODULE``; ``manage.py jobqueue_worker`` is that same
command with the project's settings already loaded.
"""

from __future__ import annotations

from typing import Any


def __getattr__(alias: str) -> Any:
    if alias.startswith("__"):
        raise AttributeError(alias)
    import django
    from django.apps import apps

    if not apps.ready:
        django.setup()
    from jobqueue.contrib.django.backend import JobQueueBackend
    from jobqueue.contrib.django.compat import task_backends

    try:
        backend = task_backends[alias]
    except Exception as exc:  # noqa: BLE001 - Django's error for an unknown alias varies
        raise AttributeError(f"TASKS has no backend {alias!r}: {exc}") from None
    if not isinstance(backend, JobQueueBackend):
        raise AttributeError(f"TASKS[{alias!r}] is a {type(backend).__name__}, "
                             "not jobqueue.contrib.django.JobQueueBackend")
    return backend.app
