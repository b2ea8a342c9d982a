"""Alembic environment of jobqueue.

Runs with its own version table inside the jobqueue schema, so it coexists
with the host application's Alembic history. The schema name arrives through
``config.attributes["jobqueue_schema"]`` (set by ``jobqueue.db.migrate``).
"""

from __future__ import annotations

from alembic import context
from psycopg import sql

from jobqueue.db.migrate import VERSION_TABLE, migrate_lock_key

config = context.config
schema: str = config.attributes.get("jobqueue_schema", "jobqueue")
create_schema = "CREATE SCHEMA IF NOT EXISTS " + sql.Identifier(schema).as_string(None)

if context.is_offline_mode():
    context.configure(
        dialect_name="postgresql",
        literal_binds=True,
        transactional_ddl=True,
        version_table=VERSION_TABLE,
        version_table_schema=schema,
    )
    with context.begin_transaction():
        context.execute(create_schema)
        context.run_migrations()
else:
    connection = config.attributes["connection"]
    context.configure(
        connection=connection,
        transactional_ddl=True,
        version_table=VERSION_TABLE,
        version_table_schema=schema,
    )
    with context.begin_transaction():
        connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({migrate_lock_key(schema)})")
        # The version table lives in the schema, so the schema must exist first.
        connection.exec_driver_sql(create_schema)
        context.run_migrations()
