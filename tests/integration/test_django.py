"""The django.tasks backend in a real Django project on real Postgres.

The project is ``tests/django_project`` (Django's PostgreSQL backend on psycopg
3, the ``django_tasks`` backport before Django 6). Its tables and jobqueue's
live in one schema made for this module. Tasks enqueue on Django's own
connection, so what counts is what another connection sees, and when.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from jobqueue import JobQueue, testing
from jobqueue.testing import Drained
from tests.helpers import count

django = pytest.importorskip("django")
ROOT = Path(__file__).resolve().parents[2]
MANAGE = ROOT / "tests" / "django_project" / "manage.py"


@pytest.fixture(scope="module")
def project(pg_dsn: str) -> Iterator[dict[str, str]]:
    """The project set up once per test process: its schema migrated by its commands."""
    schema = f"jq_django_{uuid.uuid4().hex[:8]}"
    env = {"JOBQUEUE_DJANGO_DSN": pg_dsn, "JOBQUEUE_DJANGO_SCHEMA": schema,
           "DJANGO_SETTINGS_MODULE": "tests.django_project.settings"}
    with psycopg.connect(pg_dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    os.environ.update(env)
    try:
        django.setup()
        from django.core.management import call_command

        call_command("jobqueue_migrate", stdout=io.StringIO())
        call_command("migrate", run_syncdb=True, verbosity=0)
        yield env
    finally:
        from django.db import connections

        connections.close_all()
        for key in env:
            os.environ.pop(key, None)
        with psycopg.connect(pg_dsn, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))


@pytest.fixture
def queue(project: dict[str, str], pg_dsn: str) -> Iterator[JobQueue]:
    from jobqueue.contrib.django.compat import task_backends

    app: JobQueue = task_backends["default"].app
    yield app
    # Each test starts from empty queues (the Django tables are its own business).
    with psycopg.connect(pg_dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("TRUNCATE {}, {}, {}").format(
            *(sql.Identifier(app.schema, t) for t in ("jobs", "dead_jobs", "job_history"))))


@pytest.fixture
def observer(pg_dsn: str) -> Iterator[psycopg.Connection[Any]]:
    """Another connection: what it sees is what is committed."""
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        yield conn


def drain(app: JobQueue) -> Drained:
    return testing.drain(app)  # retries made due at once: no waiting out backoffs


def test_a_task_enqueued_in_an_atomic_block_exists_only_once_the_block_commits(
        queue: JobQueue, observer: psycopg.Connection[Any]) -> None:
    from django.db import transaction

    from tests.django_project.shop.models import Order, Receipt
    from tests.django_project.shop.tasks import send_receipt

    with transaction.atomic():
        order = Order.objects.create(item="book")
        result = send_receipt.enqueue(order.id)
        assert result.status == "READY"
        # In Django's open transaction: nobody else sees the job (or the order) yet.
        assert count(observer, queue.schema, "jobs") == 0
    assert count(observer, queue.schema, "jobs") == 1
    drain(queue)
    assert list(Receipt.objects.values_list("order_id", flat=True)) == [order.id]
    result.refresh()
    assert result.status == "SUCCESSFUL"
    assert result.return_value == f"receipt for order {order.id}"
    assert result.is_finished and result.attempts == 1
    assert result.enqueued_at <= result.started_at <= result.finished_at


def test_a_task_enqueued_in_an_atomic_block_that_rolls_back_never_exists(
        queue: JobQueue, observer: psycopg.Connection[Any]) -> None:
    from django.db import transaction

    from tests.django_project.shop.models import Order
    from tests.django_project.shop.tasks import send_receipt

    before = Order.objects.count()
    with pytest.raises(RuntimeError), transaction.atomic():
        order = Order.objects.create(item="lamp")
        send_receipt.enqueue(order.id)
        raise RuntimeError("the view fails after enqueueing")
    assert Order.objects.count() == before
    assert count(observer, queue.schema, "jobs") == 0
    assert count(observer, queue.schema, "job_history") == 0


def test_a_nested_atomic_block_that_rolls_back_takes_only_its_own_jobs(
        queue: JobQueue, observer: psycopg.Connection[Any]) -> None:
    from django.db import transaction

    from tests.django_project.shop.tasks import urgent

    with transaction.atomic():
        kept = urgent.enqueue(1)
        with pytest.raises(ValueError), transaction.atomic():  # a savepoint
            urgent.enqueue(2)
            raise ValueError("inner block fails")
        # Django's outer transaction is intact and goes on.
        also = urgent.enqueue(3)
    ids = [int(r[0]) for r in observer.execute(sql.SQL("SELECT id FROM {} ORDER BY id").format(
        sql.Identifier(queue.schema, "jobs")))]
    assert ids == [int(kept.id), int(also.id)]


def test_outside_an_atomic_block_the_enqueue_commits_at_once(
        queue: JobQueue, observer: psycopg.Connection[Any]) -> None:
    from tests.django_project.shop.tasks import urgent

    result = urgent.enqueue(21)
    assert count(observer, queue.schema, "jobs", "id = %s", (int(result.id),)) == 1
    drain(queue)
    assert urgent.get_result(result.id).return_value == 42


def test_priority_queue_name_and_run_after_map_onto_the_job(queue: JobQueue) -> None:
    from django.utils import timezone

    from tests.django_project.shop.tasks import send_receipt, urgent

    mail = queue.job(int(urgent.enqueue(1).id))
    assert (mail.queue, mail.priority) == ("mail", -50)  # Django: higher first
    later = timezone.now() + timedelta(hours=1)
    deferred = send_receipt.using(run_after=later, priority=-10).enqueue(7)
    info = queue.job(int(deferred.id))
    assert (info.state, info.queue, info.priority) == ("scheduled", "default", 10)
    assert info.run_at == later
    assert send_receipt.get_result(deferred.id).status == "READY"


def test_a_failing_task_is_failed_with_its_errors_and_unknown_ids_do_not_exist(
        queue: JobQueue) -> None:
    from tests.django_project.shop.tasks import always_fails, send_receipt

    try:
        from django.tasks.exceptions import TaskResultDoesNotExist  # Django 6
    except ImportError:
        from django_tasks.exceptions import TaskResultDoesNotExist

    result = always_fails.enqueue()
    assert drain(queue) == Drained(retried=1, dead=1)  # OPTIONS max_attempts=2
    result.refresh()
    assert result.status == "FAILED"
    with pytest.raises(ValueError, match="Task failed"):  # Django's word for no value
        _ = result.return_value
    assert [e.exception_class for e in result.errors] == [ValueError, ValueError]
    assert all("the task fails" in e.traceback for e in result.errors)
    assert result.attempts == 2
    with pytest.raises(TaskResultDoesNotExist):
        send_receipt.get_result("999999999")
    with pytest.raises(TaskResultDoesNotExist):
        send_receipt.get_result("not-an-id")


def test_context_and_async_tasks_run(queue: JobQueue) -> None:
    from tests.django_project.shop.tasks import async_double, attempts

    ctx = attempts.enqueue()
    coro = async_double.enqueue(4)
    drain(queue)
    assert attempts.get_result(ctx.id).return_value == 1
    assert async_double.get_result(coro.id).return_value == 8


def manage(project: dict[str, str], *args: str, timeout: float = 60) -> \
        subprocess.CompletedProcess[str]:
    env = {**os.environ, **project, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, str(MANAGE), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)


def test_manage_py_jobqueue_worker_runs_the_projects_tasks(
        queue: JobQueue, project: dict[str, str]) -> None:
    from tests.django_project.shop.models import Order, Receipt
    from tests.django_project.shop.tasks import send_receipt, urgent

    orders = [Order.objects.create(item=f"item {i}") for i in range(5)]
    results = [send_receipt.enqueue(o.id) for o in orders] + [urgent.enqueue(5)]
    # --burst drains and exits 0; without --queues it works the backend's QUEUES.
    done = manage(project, "jobqueue_worker", "--burst", "--concurrency", "2")
    assert done.returncode == 0, done.stderr
    assert sorted(Receipt.objects.filter(order_id__in=[o.id for o in orders])
                  .values_list("order_id", flat=True)) == sorted(o.id for o in orders)
    for r in results:
        r.refresh()
        assert r.status == "SUCCESSFUL"
    assert results[-1].return_value == 10


def test_manage_py_commands_report_bad_input_in_one_line(project: dict[str, str]) -> None:
    bad = manage(project, "jobqueue_worker", "--concurrency", "zero")
    assert bad.returncode != 0
    assert "Traceback" not in bad.stderr and "--concurrency" in bad.stderr
    unknown = manage(project, "jobqueue_worker", "--backend", "nope", "--burst")
    assert unknown.returncode != 0
    assert "Traceback" not in unknown.stderr and "nope" in unknown.stderr
    again = manage(project, "jobqueue_migrate")
    assert again.returncode == 0, again.stderr
    assert "up to date" in again.stdout


def test_the_backend_is_built_on_django_tasks_where_django_has_it(
        project: dict[str, str]) -> None:
    from jobqueue.contrib.django import compat

    if django.VERSION >= (6, 0):
        import django.tasks as framework  # type: ignore[import-not-found,unused-ignore]
    else:
        import django_tasks as framework  # type: ignore[no-redef,unused-ignore]
    assert compat.task_backends is framework.task_backends


def test_the_readme_settings_name_the_real_backend_and_app(project: dict[str, str]) -> None:
    from django.utils.module_loading import import_string

    from jobqueue.contrib.django.backend import JobQueueBackend
    from tests.readme import example

    found: dict[str, Any] = {}
    exec(compile(example("Django", 0), "README.md", "exec"), found)
    assert "jobqueue.contrib.django" in found["INSTALLED_APPS"]
    params = found["TASKS"]["default"]
    backend = import_string(params["BACKEND"])("readme", params)
    assert isinstance(backend, JobQueueBackend)
    assert backend.queues == {"default", "mail"}
    assert backend.database == "default"
