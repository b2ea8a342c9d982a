"""Initial schema: jobs, dead_jobs, workers, cron.

Revision ID: 0001_initial
Revises:
Create Date: 2026-11-26
"""

from jobqueue.db.migrate import run_revision

revision = "0001_initial"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_revision(revision)


def downgrade() -> None:
    run_revision(f"{revision}.down")
