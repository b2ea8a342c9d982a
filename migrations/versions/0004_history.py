"""History of succeeded jobs (partitioned by day), results, progress.

Revision ID: 0004_history
Revises: 0003_worker_defaults
Create Date: 2026-12-02
"""

from jobqueue.db.migrate import run_revision

revision = "0004_history"
down_revision = "0003_worker_defaults"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_revision(revision)


def downgrade() -> None:
    run_revision(f"{revision}.down")
