"""Payload versions in one process: what a job records, and what a worker does with it.

``@app.task(version=N, upgrade={n: fn})``: every insert path records the version
(one enqueue, a bulk insert, COPY, a workflow, a replay); a worker upgrades
older args step by step before the handler sees them, dead-letters a job it
cannot upgrade with a clear error, and hands back a job newer than it knows
without counting an attempt. The rolling deploy itself, two worker processes
on two releases, is tests/acceptance/test_deploys.py.
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from psycopg import sql

from jobqueue import JobQueue, PayloadError, chain
from jobqueue.dead import DeadFilter
from jobqueue.testing import drain
from tests.helpers import count
from tests.readme import example


def versions(admin: psycopg.Connection[Any], schema: str,
             table: str = "jobs") -> dict[int, int]:
    return dict(admin.execute(sql.SQL("SELECT id, version FROM {}").format(  # type: ignore[arg-type]
        sql.Identifier(schema, table))).fetchall())


def test_every_insert_path_records_the_tasks_version(app: JobQueue,
                                                     admin: psycopg.Connection[Any]) -> None:
    @app.task(version=3, upgrade={1: dict, 2: dict})
    def resize(width: int) -> None: ...

    @app.task
    def plain() -> None: ...

    one = app.enqueue(resize, {"width": 1})
    many = app.enqueue_many([(resize, {"width": 2}), (plain, None)])
    copied = app.enqueue_many([(resize, {"width": 3})] * 1000)  # by COPY
    flow = app.enqueue_workflow(chain(app.sig(resize, {"width": 4}), app.sig(plain)))
    given = app.enqueue("resize", {"width": 5}, version=2)  # the producer says which
    found = versions(admin, app.schema)
    assert found[one] == 3 and found[many[0]] == 3 and found[many[1]] == 1
    assert {found[i] for i in copied} == {3}
    assert [found[i] for i in flow.ids] == [3, 1]
    assert found[given] == 2


def test_bad_versions_are_refused_before_any_sql(app: JobQueue) -> None:
    with pytest.raises(PayloadError, match="version must be an integer >= 1"):
        app.enqueue("anything", {}, strict=False, version=0)
    with pytest.raises(ValueError, match="version must be an integer >= 1"):
        app.task(version=0)(lambda: None)
    with pytest.raises(ValueError, match="upgrade maps a version from 1 to 1"):
        app.task(name="t1", version=2, upgrade={2: dict})(lambda: None)
    with pytest.raises(ValueError, match="executor must be one of"):
        app.task(name="t2", executor="fiber")(lambda: None)  # type: ignore[typeddict-item]
    with pytest.raises(ValueError, match="transactional task cannot run in a process"):
        app.task(name="t3", executor="process", transactional=True)(lambda: None)


def test_older_args_are_upgraded_step_by_step(app: JobQueue,
                                              admin: psycopg.Connection[Any]) -> None:
    seen: list[dict[str, Any]] = []

    @app.task(version=3, upgrade={1: lambda a: {"w": a["width"]},
                                  2: lambda a: {"size": [a["w"], a["w"]]}})
    def resize(size: list[int]) -> list[int]:
        seen.append({"size": size})
        return size

    v1 = app.enqueue(resize, {"width": 7}, version=1)
    v2 = app.enqueue(resize, {"w": 8}, version=2)
    v3 = app.enqueue(resize, {"size": [9, 9]})
    assert drain(app).succeeded == 3
    assert sorted(s["size"][0] for s in seen) == [7, 8, 9]
    assert app.result(v1) == [7, 7] and app.result(v2) == [8, 8] and app.result(v3) == [9, 9]
    # The job's own args stay as enqueued: history shows what the producer sent,
    # and for which version.
    assert (app.job(v1).args, app.job(v1).version) == ({"width": 7}, 1)
    assert (app.job(v2).version, app.job(v3).version) == (2, 3)


def test_a_missing_upgrade_step_is_a_permanent_failure(app: JobQueue) -> None:
    @app.task(version=3, upgrade={2: lambda a: a})
    def resize(size: int) -> None: ...

    job = app.enqueue(resize, {"width": 1}, version=1)
    drained = drain(app)
    assert drained.dead == 1
    dead = app.dead.get(job)
    assert dead.reason == "permanent"
    assert dead.errors[-1]["message"] == ("task 'resize' has no upgrade from payload version 1 "
                                       "to 2")


def test_a_newer_job_goes_back_without_an_attempt(app: JobQueue,
                                                  admin: psycopg.Connection[Any]) -> None:
    ran: list[int] = []

    @app.task
    def resize(width: int) -> None:
        ran.append(width)

    newer = app.enqueue(resize, {"width": [1, 2]}, version=2)
    older = app.enqueue(resize, {"width": 1})
    drain(app, max_rounds=1)
    assert ran == [1]
    row = admin.execute(sql.SQL("SELECT attempts, errors, state, run_at > now() FROM {} "
                                "WHERE id = %s").format(sql.Identifier(app.schema, "jobs")),
                        (newer,)).fetchone()
    assert row == (0, [], "queued", True)  # not counted, no error, due again shortly
    assert (app.job(newer).state, app.job(newer).version) == ("scheduled", 2)
    assert count(admin, app.schema, "dead_jobs") == 0
    assert app.job(older).state == "succeeded"


def test_a_replay_keeps_the_version_and_is_upgraded(app: JobQueue,
                                                    admin: psycopg.Connection[Any]) -> None:
    seen: list[Any] = []
    fail = [True]

    @app.task(version=2, upgrade={1: lambda a: {"emails": [a["email"]]}}, max_attempts=1)
    def notify(emails: list[str]) -> None:
        if fail[0]:
            raise RuntimeError("smtp down")
        seen.append(emails)

    job = app.enqueue(notify, {"email": "a@example.com"}, version=1)
    assert drain(app).dead == 1
    assert versions(admin, app.schema, "dead_jobs") == {job: 1}
    fail[0] = False
    replayed = app.dead.replay(DeadFilter(ids=(job,)))
    assert len(replayed.replayed) == 1
    assert set(versions(admin, app.schema).values()) == {1}
    assert drain(app).succeeded == 1
    assert seen == [["a@example.com"]]


def test_every_place_a_job_can_be_says_its_version(app: JobQueue) -> None:
    @app.task(version=2, max_attempts=1)
    def render(ok: bool) -> None:
        if not ok:
            raise RuntimeError("no")

    live = app.enqueue(render, {"ok": True}, delay=3600)
    done, dead = app.enqueue(render, {"ok": True}), app.enqueue(render, {"ok": False})
    drain(app)
    assert [app.job(j).state for j in (live, done, dead)] == ["scheduled", "succeeded", "dead"]
    assert [app.job(j).version for j in (live, done, dead)] == [2, 2, 2]
    assert app.dead.get(dead).version == 2


def test_the_readme_example(pg_dsn: str, migrated: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOBQUEUE_DSN", pg_dsn)
    monkeypatch.setenv("JOBQUEUE_SCHEMA", migrated)
    namespace: dict[str, Any] = {}
    heading = "Payload versions: rolling deploys"
    exec(compile(example(heading), f"README.md#{heading}", "exec"), namespace)
    app: JobQueue = namespace["app"]
    try:
        old = app.enqueue("send_welcome", {"user_id": 7}, version=1)  # from release N
        new = app.enqueue(namespace["send_welcome"], {"user_ids": [1, 2], "template": "hi"})
        assert drain(app).succeeded == 2
        assert (app.result(old), app.result(new)) == (1, 2)
    finally:
        app.close()
