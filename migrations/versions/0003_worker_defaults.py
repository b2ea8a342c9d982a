"""A job's max_attempts may be left to the worker's declaration of its task.

Revision ID: 0003_worker_defaults
Revises: 0002_flow_control
Create Date: 2026-12-02
"""

from jobqueue.db.migrate import run_revision

revision = "0003_worker_defaults"
down_revision = "0002_flow_control"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_revision(revision)


def downgrade() -> None:
    run_revision(f"{revision}.down")
