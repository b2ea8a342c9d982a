"""The Tasks framework wherever it lives: ``django.tasks`` (Django 6) or the backport.

Django 6 ships the framework as ``django.tasks``; Django 5.2 projects install the
``django-tasks`` backport, whose ``django_tasks`` has the same API. Everything
the backend needs is imported here once, so the rest of the package never asks
which one it got.
"""

from __future__ import annotations

from typing import Any

try:
    from django import tasks as _tasks  # type: ignore[attr-defined,unused-ignore]
    from django.tasks import base as _types  # type: ignore[import-not-found,unused-ignore]
    from django.tasks import exceptions as _exceptions  # type: ignore[import-not-found,unused-ignore]
    from django.tasks.backends import base as _base  # type: ignore[import-not-found,unused-ignore]
except ImportError:
    import django_tasks as _tasks  # type: ignore[no-redef,unused-ignore]
    from django_tasks import base as _types  # type: ignore[no-redef,unused-ignore]
    from django_tasks import exceptions as _exceptions  # type: ignore[no-redef,unused-ignore]
    from django_tasks.backends import base as _base  # type: ignore[no-redef,unused-ignore]

#: The registry of configured backends (``TASKS``), by alias.
task_backends: Any = _tasks.task_backends
BaseTaskBackend: Any = _base.BaseTaskBackend
TaskResult: Any = _types.TaskResult
TaskResultStatus: Any = _types.TaskResultStatus
TaskContext: Any = _types.TaskContext
TaskError: Any = _types.TaskError
TaskResultDoesNotExist: Any = _exceptions.TaskResultDoesNotExist
