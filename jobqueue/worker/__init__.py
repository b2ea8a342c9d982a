"""The worker process and its services (fetcher, executor, completer, heartbeat,
listener, maintenance, scheduler, gauges)."""

from jobqueue.worker.worker import Worker, WorkerConfig

__all__ = ["Worker", "WorkerConfig"]
