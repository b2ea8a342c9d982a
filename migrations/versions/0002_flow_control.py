"""Flow control: lock keys, cancel requests, correlation ids, queue controls, counters.

Revision ID: 0002_flow_control
Revises: 0001_initial
Create Date: 2026-11-26
"""

from alembic import context

from jobqueue.db.migrate import run_sql
from jobqueue.sql import schema_revision_text

revision = "0002_flow_control"
down_revision = "0001_initial"
branch_labels = None
depends_on = None


def _schema() -> str:
    return str(context.config.attributes["jobqueue_schema"])


def upgrade() -> None:
    run_sql(schema_revision_text("0002_flow_control", _schema()))


def downgrade() -> None:
    run_sql(schema_revision_text("0002_flow_control.down", _schema()))
