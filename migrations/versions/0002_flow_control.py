"""Flow control: lock keys, cancel requests, correlation ids, queue controls, counters.

Revision ID: 0002_flow_control
Revises: 0001_initial
Create Date: 2026-11-26
"""

from jobqueue.db.migrate import run_revision

revision = "0002_flow_control"
down_revision = "0001_initial"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_revision(revision)


def downgrade() -> None:
    run_revision(f"{revision}.down")
