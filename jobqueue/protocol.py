"""The wire protocol between jobqueue processes: channels, messages, lock keys.

Processes of one queue never talk to each other directly; they meet in
Postgres. What they must agree on lives here, once:

- **NOTIFY channels**: one per schema for "a job is ready in queue Q" (the
  payload is the queue name), one for control messages (settings changed,
  cancel job N), and one private probe channel per worker;
- **control messages**: their text form, built and parsed in one place;
- **advisory-lock keys**: 64-bit keys hashed from the schema and a purpose, so
  two queues in one database never share a lock and a key never changes
  between versions (a rolling deploy would otherwise run two leaders).
"""

from __future__ import annotations

import hashlib

SETTINGS_CHANGED = "settings"
#: The exit status of a worker that stopped to be recycled (its --max-jobs-per-child
#: or --max-memory): its supervisor starts a fresh one. 75 is EX_TEMPFAIL.
RECYCLE_EXIT_CODE = 75
_CANCEL_PREFIX = "cancel:"


def job_channel(schema: str) -> str:
    """The NOTIFY channel for new jobs: one per schema, so two queues in one database
    stay apart."""
    return f"jobqueue.{schema}"


def control_channel(schema: str) -> str:
    """Where control messages go, apart from the new-job channel whose payload is a
    queue name, which may be any text."""
    return f"jobqueue.{schema}.control"


def outcome_channel(schema: str) -> str:
    """Where the statements that finish jobs somebody waits for (app.result) say so:
    the payload is their ids, comma-separated."""
    return f"jobqueue.{schema}.outcome"


def progress_channel(schema: str) -> str:
    """Where progress of awaited jobs is announced; the payload as for outcomes."""
    return f"jobqueue.{schema}.progress"


def parse_ids(payload: str) -> set[int]:
    """The job ids of an outcome or progress notification."""
    return {int(part) for part in payload.split(",") if part.isdigit()}


def probe_channel(schema: str, worker_id: str) -> str:
    """A channel only this worker listens on, so its LISTEN probes never wake the fleet.

    Hashed to stay within Postgres's 63-byte identifiers whatever the names.
    """
    digest = hashlib.blake2b(f"{schema}\0{worker_id}".encode(), digest_size=8).hexdigest()
    return f"jobqueue_probe_{digest}"


def cancel_message(job_id: int) -> str:
    return f"{_CANCEL_PREFIX}{job_id}"


def parse_cancel(message: str) -> int | None:
    """The job id of a cancel message, or None for any other control message."""
    if message.startswith(_CANCEL_PREFIX) and message[len(_CANCEL_PREFIX):].isdigit():
        return int(message[len(_CANCEL_PREFIX):])
    return None


def advisory_key(schema: str, *purpose: str) -> int:
    """The signed 64-bit advisory-lock key of ``purpose`` in ``schema``.

    Purposes in use: ``leader`` (maintenance), ``cron`` (the scheduler),
    ``gauges`` (the metrics leader), ``migrate``, and ``queue``, NAME (a queue's
    fleet-wide limits).
    """
    text = ":".join(("jobqueue", schema, *purpose))
    digest = hashlib.blake2b(text.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)
