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
    JobFailed,
    JobNotFound,
    JobQueueError,
    LeaseLostError,
    PayloadError,
    PermanentError,
    PrivilegeError,
    QueueFull,
    ResultError,
    RetryAfter,
    SchemaNotMigratedError,
    UnknownTaskError,
    UnsupportedConnectionError,
    WorkflowNotFound,
)
from jobqueue.rows import HistoryEntry, JobInfo, Progress
from jobqueue.tasks import JobContext, Retry, Task
from jobqueue.workflow import Signature, chain, chord, group

__all__ = [
    "ConfigError",
    "CronError",
    "DatabaseError",
    "DuplicateJobError",
    "DuplicateTaskError",
    "HistoryEntry",
    "JobContext",
    "JobFailed",
    "JobInfo",
    "JobNotFound",
    "JobQueue",
    "JobQueueError",
    "LeaseLostError",
    "PayloadError",
    "PermanentError",
    "PrivilegeError",
    "Progress",
    "QueueFull",
    "ResultError",
    "Retry",
    "RetryAfter",
    "SchemaNotMigratedError",
    "Signature",
    "Task",
    "UnknownTaskError",
    "UnsupportedConnectionError",
    "WorkflowNotFound",
    "chain",
    "chord",
    "group",
]

__version__ = "0.1.0"
