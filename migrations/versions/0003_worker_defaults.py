"""A job's max_attempts may be left to the worker's declaration of its task.

Revision ID: 0003_worker_defaults
Revises: 0002_flow_control
Create Date: 2026-12-02
"""

from alembic import context

from jobqueue.db.migrate import run_sql
from jobqueue.sql import schema_revision_text

revision = "0003_worker_defaults"
down_revision = "0002_flow_control"
branch_labels = None
depends_on = None


def _schema() -> str:
    return str(context.config.attributes["jobqueue_schema"])


def upgrade() -> None:
    run_sql(schema_revision_text("0003_worker_defaults", _schema()))


def downgrade() -> None:
    run_sql(schema_revision_text("0003_worker_defaults.down", _schema()))
