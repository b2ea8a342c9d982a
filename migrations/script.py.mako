"""${message}

Revision ID: ${up_revision}
Revises: ${down_revision | comma,n}
Create Date: ${create_date}
"""

from alembic import context

from jobqueue.db.migrate import run_sql
from jobqueue.sql import schema_revision_text

revision = ${repr(up_revision)}
down_revision = ${repr(down_revision)}
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_sql(schema_revision_text("${up_revision}", context.config.attributes["jobqueue_schema"]))


def downgrade() -> None:
    run_sql(
        schema_revision_text("${up_revision}.down", context.config.attributes["jobqueue_schema"])
    )
