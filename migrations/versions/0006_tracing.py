"""Tracing: the producer's trace context, kept with the job.

Revision ID: 0006_tracing
Revises: 0005_workflows
Create Date: 2026-12-03
"""

from jobqueue.db.migrate import run_revision

revision = "0006_tracing"
down_revision = "0005_workflows"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_revision(revision)


def downgrade() -> None:
    run_revision(f"{revision}.down")
