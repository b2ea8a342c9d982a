"""Settings: the pooler mode and the LISTEN DSN, from arguments and the environment."""

from __future__ import annotations

import pytest

from jobqueue import ConfigError, JobQueue
from jobqueue.config import Settings
from jobqueue.db.store import PoolOptions, session_kwargs
from jobqueue.worker.worker import worker_pool

DSN = "postgresql://app@pgbouncer:6432/appdb"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("JOBQUEUE_POOLER", "JOBQUEUE_LISTEN_DSN"):
        monkeypatch.delenv(name, raising=False)


def test_no_pooler_by_default_and_psycopg_prepares_as_usual() -> None:
    app = JobQueue(DSN)
    assert (app.settings.pooler, app.settings.pooled, app.settings.listen_dsn) == (
        "none", False, None)
    assert "prepare_threshold" not in session_kwargs(app.settings)
    assert worker_pool(app.settings, 10).settings == ("worker_session",)


def test_transaction_pooler_from_the_argument_or_the_environment(
        monkeypatch: pytest.MonkeyPatch) -> None:
    app = JobQueue(DSN, pooler="transaction", listen_dsn="postgresql://app@db:5432/appdb")
    assert app.settings.pooled and app.settings.listen_dsn == "postgresql://app@db:5432/appdb"
    monkeypatch.setenv("JOBQUEUE_POOLER", "Transaction")
    monkeypatch.setenv("JOBQUEUE_LISTEN_DSN", "host=db dbname=appdb")
    from_env = JobQueue(DSN)
    assert from_env.settings.pooled and from_env.settings.listen_dsn == "host=db dbname=appdb"
    assert JobQueue(DSN, pooler="none").settings.pooled is False  # the argument wins


def test_behind_a_transaction_pooler_nothing_is_prepared_and_no_session_is_set() -> None:
    settings = Settings(DSN, pooler="transaction")
    assert session_kwargs(settings)["prepare_threshold"] is None
    assert PoolOptions().connect_kwargs(settings)["prepare_threshold"] is None
    assert worker_pool(settings, 10).settings == ()


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"pooler": "statement"}, "invalid pooler 'statement': use one of none, transaction"),
    ({"listen_dsn": "host='unterminated"}, "invalid DSN"),
])
def test_bad_pooler_settings_are_one_clear_error(kwargs: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        JobQueue(DSN, **kwargs)  # type: ignore[arg-type]
