"""The project's Django tasks, as users write them."""

from typing import Any

from jobqueue.contrib.django.compat import TaskContext
from tests.django_project.shop.models import Receipt

try:
    from django.tasks import task  # Django 6
except ImportError:
    from django_tasks import task


@task()
def send_receipt(order_id: int) -> str:
    text = f"receipt for order {order_id}"
    Receipt.objects.create(order_id=order_id, text=text)
    return text


@task(queue_name="mail", priority=50)
def urgent(n: int) -> int:
    return n * 2


@task()
def always_fails() -> None:
    raise ValueError("the task fails")


@task(takes_context=True)
def attempts(context: Any) -> int:
    assert isinstance(context, TaskContext)
    return int(context.attempt)


@task()
async def async_double(n: int) -> int:
    return n * 2
