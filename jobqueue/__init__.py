"""jobqueue: a PostgreSQL-native transactional job queue.

Enqueue jobs in the same transaction as your own writes; workers claim them
with ``FOR UPDATE SKIP LOCKED``, retry with backoff, and dead-letter what cannot
succeed. Only public names live here.
"""

from jobqueue.app import JobQueue
from jobqueue.cron import CronError
from jobqueue.errors import (
    ConfigError,
    DatabaseError,
    DuplicateJobError,
    DuplicateTaskError,
    JobQueueError,
    PayloadError,
    PermanentError,
    PrivilegeError,
    RetryAfter,
    SchemaNotMigratedError,
    UnknownTaskError,
    UnsupportedConnectionError,
)
from jobqueue.tasks import JobContext, Retry, Task

__all__ = [
    "ConfigError",
    "CronError",
    "DatabaseError",
    "DuplicateJobError",
    "DuplicateTaskError",
    "JobContext",
    "JobQueue",
    "JobQueueError",
    "PayloadError",
    "PermanentError",
    "PrivilegeError",
    "Retry",
    "RetryAfter",
    "SchemaNotMigratedError",
    "Task",
    "UnknownTaskError",
    "UnsupportedConnectionError",
]

__version__ = "0.1.0"
