"""The shortest end-to-end path: enqueue in a transaction, a worker runs it."""

from __future__ import annotations

import threading

from jobqueue import JobQueue
from tests.helpers import count, wait_until, worker_thread


def test_committed_job_runs_and_row_is_deleted(app: JobQueue, conn, admin) -> None:
    done = threading.Event()

    @app.task()
    def ping(value: int) -> None:
        assert value == 7
        done.set()

    with worker_thread(app):
        job_id = app.enqueue("ping", {"value": 7}, conn=conn)
        conn.commit()
        assert job_id > 0
        assert done.wait(10)
        wait_until(lambda: count(admin, app.schema, "jobs") == 0, message="ack")
