# The jobqueue CLI and worker, installed from this checkout the way a user
# installs it: `pip install .` builds the wheel (package, SQL and the Alembic
# environment) and installs it with its dependencies.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
# Only what the wheel is built from: metadata, the package, the migrations.
COPY pyproject.toml README.md ./
COPY jobqueue ./jobqueue
COPY migrations ./migrations
RUN pip install . && rm -rf /src

# An unprivileged user, in a directory without a checkout in it, so the
# installed package is the one that runs.
RUN useradd --create-home --uid 10001 jobqueue
USER jobqueue
WORKDIR /home/jobqueue

CMD ["jobqueue", "--help"]
