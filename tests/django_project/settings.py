"""Settings of the test project: the database and schema come from the environment.

``JOBQUEUE_DJANGO_DSN`` is the test server; ``JOBQUEUE_DJANGO_SCHEMA`` is the
schema both Django's tables (by search_path) and jobqueue's live in, dropped
with the test module.
"""

import os

from psycopg.conninfo import conninfo_to_dict

_dsn = conninfo_to_dict(os.environ["JOBQUEUE_DJANGO_DSN"])
SCHEMA = os.environ["JOBQUEUE_DJANGO_SCHEMA"]

SECRET_KEY = "tests-only"
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
INSTALLED_APPS = ["jobqueue.contrib.django", "tests.django_project.shop"]
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": _dsn.get("dbname", ""),
        "USER": _dsn.get("user", ""),
        "PASSWORD": _dsn.get("password", ""),
        "HOST": _dsn.get("host", ""),
        "PORT": _dsn.get("port", ""),
        "OPTIONS": {"options": f"-c search_path={SCHEMA}"},
    },
}
TASKS = {
    "default": {
        "BACKEND": "jobqueue.contrib.django.JobQueueBackend",
        "QUEUES": ["default", "mail"],
        "OPTIONS": {"schema": SCHEMA, "max_attempts": 2},
    },
}
