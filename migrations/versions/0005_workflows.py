"""Workflows: waiting nodes, their dependencies and their workflows.

Revision ID: 0005_workflows
Revises: 0004_history
Create Date: 2026-12-02
"""

from jobqueue.db.migrate import run_revision

revision = "0005_workflows"
down_revision = "0004_history"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_revision(revision)


def downgrade() -> None:
    run_revision(f"{revision}.down")
