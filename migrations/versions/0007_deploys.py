"""Deploys: payload versions on jobs, backpressure limits on queues.

Revision ID: 0007_deploys
Revises: 0006_tracing
Create Date: 2026-12-03
"""

from jobqueue.db.migrate import run_revision

revision = "0007_deploys"
down_revision = "0006_tracing"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_revision(revision)


def downgrade() -> None:
    run_revision(f"{revision}.down")
