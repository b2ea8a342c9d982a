"""Initial schema: jobs, dead_jobs, workers, cron.

Revision ID: 0001_initial
Revises:
Create Date: 2026-11-26
"""

from alembic import context

from jobqueue.db.migrate import run_sql
from jobqueue.sql import schema_revision_text

revision = "0001_initial"
down_revision = None
branch_labels = None
depends_on = None


def _schema() -> str:
    return str(context.config.attributes["jobqueue_schema"])


def upgrade() -> None:
    run_sql(schema_revision_text("0001_initial", _schema()))


def downgrade() -> None:
    run_sql(schema_revision_text("0001_initial.down", _schema()))
