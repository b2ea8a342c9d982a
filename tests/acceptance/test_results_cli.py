"""``jobqueue job show``, ``jobqueue history list`` and progress in ``stats``, from the shell.

A real worker process runs jobs that return results, fail and report progress;
the commands read them back as a person (tables) and a script (``--json``) would.
"""

from __future__ import annotations

import json
from pathlib import Path

from jobqueue import JobQueue
from tests.acceptance.support import Cli, Workers, assert_one_error_line
from tests.helpers import wait_until

APP = "tests.apps.results_app:app"


def test_job_show_and_history_list(app: JobQueue, cli: Cli, workers: Workers,
                                   tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    done = app.enqueue("answer", {"n": 21}, strict=False, correlation_id="req-1")
    dead = app.enqueue("refuse", {"why": "no <such> customer"}, strict=False)
    running = app.enqueue("progressing", {"gate": str(gate)}, strict=False)
    worker = workers.start("--concurrency", "4", app=APP)
    assert app.result(done, timeout=30) == {"doubled": 42}

    shown = json.loads(cli.ok("job", "show", str(done), "--json"))
    assert (shown["state"], shown["result"], shown["attempts"], shown["correlation_id"]) == (
        "succeeded", {"doubled": 42}, 1, "req-1")
    text = cli.ok("job", "show", str(done))
    assert f"job {done}: answer on queue 'default': succeeded" in text
    assert 'result:     {"doubled": 42}' in text

    wait_until(lambda: app.job(dead).state == "dead", 30, message="the refusal")
    text = cli.ok("job", "show", str(dead))
    assert "dead (permanent)" in text and "jobqueue.errors.PermanentError: no <such> customer" \
        in text

    # A running job's progress: in job show and under the stats table.
    wait_until(lambda: app.job(running).report, 30, message="progress to be written")
    text = cli.ok("job", "show", str(running))
    assert ": running" in text and "progress:   3 of 10 - resizing" in text
    stats = cli.ok("stats")
    assert "running, with progress:" in stats and "3/10 (30%)" in stats and "resizing" in stats
    gate.touch()
    assert app.result(running, timeout=30) == "resized"
    assert json.loads(cli.ok("job", "show", str(running), "--json"))["progress"]["done"] == 10

    listed = json.loads(cli.ok("history", "list", "--json"))
    assert [e["id"] for e in listed] == [running, done]  # newest first; the dead one is not here
    assert [e["id"] for e in json.loads(cli.ok("history", "list", "--task", "answer",
                                               "--json"))] == [done]
    assert json.loads(cli.ok("history", "list", "--since", "1m", "--json"))
    assert cli.ok("history", "list", "--task", "nothing") == "no succeeded jobs match\n"
    table = cli.ok("history", "list")
    assert "answer" in table and "progressing" in table and str(done) in table

    assert_one_error_line(cli("job", "show", "987654321"), "no job 987654321")
    assert_one_error_line(cli("history", "list", "--since", "yesterday-ish"), "--since")
    assert worker.stop() == 0


def test_workflow_show_and_list(app: JobQueue, cli: Cli, workers: Workers) -> None:
    from jobqueue import chain, chord, group

    flow = chain(chord(group(app.sig("answer", {"n": n}, strict=False) for n in range(3)),
                       app.sig("answer", {"n": 100}, strict=False)),
                 app.sig("refuse", {"why": "stop here"}, strict=False),
                 app.sig("answer", {"n": 7}, strict=False))
    handle = app.enqueue_workflow(flow)
    worker = workers.start("--burst", app=APP)
    assert worker.wait(60) == 0
    shown = json.loads(cli.ok("workflow", "show", str(handle.id), "--json"))
    assert shown["state"] == "failed"
    assert [n["state"] for n in shown["nodes"]] == ["succeeded"] * 4 + ["dead", "dead"]
    assert shown["nodes"][3]["depends_on"] == handle.ids[:3]
    assert shown["nodes"][5]["reason"] == "dependency_failed"
    text = cli.ok("workflow", "show", str(handle.id))
    assert f"workflow {handle.id}: failed, 6 node(s)" in text
    assert "dead (dependency_failed)" in text and '{"doubled": 200}' in text
    listed = json.loads(cli.ok("workflow", "list", "--json"))
    assert [(w["id"], w["state"], w["succeeded"], w["dead"]) for w in listed] == [
        (handle.id, "failed", 4, 2)]
    assert_one_error_line(cli("workflow", "show", "424242"), "no workflow 424242")
    # The dry run names the dependents a replay would revive.
    dry = json.loads(cli.ok("dead", "replay", str(handle.ids[4]), "--dry-run", "--json"))
    assert dry == {"dry_run": True, "would_replay": [handle.ids[4]],
                   "would_revive": [handle.ids[5]]}
