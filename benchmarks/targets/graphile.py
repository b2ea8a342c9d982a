"""Graphile Worker (Node.js), a drain peer, with the settings its performance docs favour.

It lives in a database of its own (``<prefix>_graphile``, schema
``graphile_worker``), created afresh for each scenario. Its worker is not
Python, so it does not run through :mod:`benchmarks.child`: one Node process
(``graphile_drain.mjs`` beside this file) runs its migrations, stores the jobs
with ``addJobs`` in batches of 1,000 (timed apart, not part of the drain),
runs ``VACUUM ANALYZE`` on the jobs table as the other targets' backlogs get,
and drains them with ``run()``. It prints the counts and the times as one JSON
line, and :meth:`GraphileTarget.drain_once` hands them to the drain scenario,
which checks them as it checks every other worker's.

Settings: ``concurrentJobs`` 24, ``localQueue.size`` 500 (the pool fetches and
locks 500 jobs at a time and hands them out without a round trip each),
``completeJobBatchDelay`` 0 (completions of the same tick written in one
statement), ``maxPoolSize`` 26 (its docs: ``concurrentJobs + 2`` when that is
above 10), a no-op logger and ``NO_LOG_SUCCESS=1`` (no per-job log line built).

graphile-worker is installed on first use with ``npm install --prefix`` into a
cache folder outside the repository (``$JOBQUEUE_BENCH_CACHE``, else the
user's cache folder, ``~/.cache/jobqueue-bench`` on Linux), never into the
tracked files. Without node and npm, or when the install fails, the target is
left out and the run says why.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import quote, urlencode

from psycopg.conninfo import conninfo_to_dict

from benchmarks.common import BenchmarkError, database_dsn, drop_database, recreate_database, scalar
from benchmarks.targets import Target

VERSION = "0.18.0"
PACKAGE = f"graphile-worker@{VERSION}"
SCRIPT = Path(__file__).with_name("graphile_drain.mjs")
SCHEMA = "graphile_worker"
TABLE = "_private_jobs"
CONCURRENT_JOBS = 24
LOCAL_QUEUE_SIZE = 500
COMPLETE_JOB_BATCH_DELAY = 0
MAX_POOL_SIZE = CONCURRENT_JOBS + 2
ADD_BATCH = 1_000


def cache_dir() -> Path:
    """Where graphile-worker is installed: a folder of its own per version."""
    root = os.environ.get("JOBQUEUE_BENCH_CACHE")
    if not root:
        from platformdirs import user_cache_dir

        root = user_cache_dir("jobqueue-bench")
    return Path(root) / f"graphile-worker-{VERSION}"


def node_url(dsn: str) -> str:
    """A libpq DSN (either form) as the URL node-postgres reads."""
    params = conninfo_to_dict(dsn)
    user, password = params.get("user") or "", params.get("password") or ""
    auth = quote(user, safe="") + (":" + quote(password, safe="") if password else "")
    host, port = params.get("host") or "", params.get("port") or ""
    query: dict[str, str] = {}
    if host.startswith("/"):  # a Unix socket directory goes in the query string
        query["host"], host = host, ""
    netloc = (f"{auth}@" if auth else "") + host + (f":{port}" if port and host else "")
    if port and not host:
        query["port"] = port
    if params.get("sslmode"):
        query["sslmode"] = params["sslmode"]
    url = f"postgresql://{netloc}/{quote(params.get('dbname') or '', safe='')}"
    return url + (f"?{urlencode(query)}" if query else "")


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class GraphileTarget(Target):
    name = "graphile"
    worker_module = "benchmarks.targets.graphile"
    # Why the target cannot run ("" when it can; None until first asked): the
    # install is tried once per run, not once per row.
    _problem: ClassVar[str | None] = None
    _node: ClassVar[str] = ""

    def __init__(self, dsn: str, variant: str = "", database_prefix: str = "jq_bench") -> None:
        super().__init__(dsn, variant)
        self.database = f"{database_prefix}_graphile"
        self.db_dsn = database_dsn(dsn, self.database)

    # -- install -------------------------------------------------------------------------

    @classmethod
    def available(cls) -> bool:
        return cls.problem() == ""

    @classmethod
    def problem(cls) -> str:
        """Why graphile-worker cannot run here, "" if it can (installing it if need be)."""
        if cls._problem is None:
            cls._problem = cls._prepare()
        return cls._problem

    @classmethod
    def _check(cls, node: str) -> bool:
        try:
            proc = subprocess.run([node, str(SCRIPT), "--check", str(cache_dir())],
                                  capture_output=True, text=True, timeout=60)
            found = json.loads(proc.stdout) if proc.returncode == 0 else {}
        except (OSError, subprocess.SubprocessError, ValueError):
            return False
        cls._node = str(found.get("node", ""))
        return found.get("version") == VERSION

    @classmethod
    def _prepare(cls) -> str:
        node, npm = shutil.which("node"), shutil.which("npm")
        if not node or not npm:
            return "node and npm are not on PATH"
        if cls._check(node):
            return ""
        folder = cache_dir()
        _log(f"[graphile] installing {PACKAGE} into {folder} (npm, first use)")
        try:
            folder.mkdir(parents=True, exist_ok=True)
            proc = subprocess.run([npm, "install", "--prefix", str(folder), "--save-exact",
                                   "--no-audit", "--no-fund", "--loglevel=error", PACKAGE],
                                  capture_output=True, text=True, timeout=600, cwd=folder)
        except (OSError, subprocess.SubprocessError) as exc:
            return f"npm install {PACKAGE} failed: {exc}"
        if proc.returncode != 0:
            # npm's first error lines say what went wrong (its last one where its log is).
            lines = [line for line in proc.stderr.splitlines()
                     if line.strip() and "complete log" not in line]
            said = "; ".join(lines[:2]) or f"exit status {proc.returncode}"
            return f"npm install {PACKAGE} into {folder} failed: {said}"
        if not cls._check(node):
            return f"{PACKAGE} was installed into {folder} but node cannot load it"
        return ""

    # -- the row -------------------------------------------------------------------------

    def label(self, scenario: str) -> str:
        return f"graphile-worker {VERSION}"

    def settings(self, scenario: str) -> str:
        return (f"Node {self._node or '?'}, run(): concurrentJobs {CONCURRENT_JOBS}, "
                f"localQueue.size {LOCAL_QUEUE_SIZE}, completeJobBatchDelay "
                f"{COMPLETE_JOB_BATCH_DELAY}, maxPoolSize {MAX_POOL_SIZE}, no-op logger, "
                f"NO_LOG_SUCCESS=1; stored by addJobs, {ADD_BATCH:,} per call")

    # -- the store ------------------------------------------------------------------------

    def setup(self) -> None:
        self.db_dsn = recreate_database(self.dsn, self.database)

    def teardown(self) -> None:
        drop_database(self.dsn, self.database)

    def jobs_table(self) -> tuple[str, str, str]:
        return self.db_dsn, SCHEMA, TABLE

    def pending(self) -> dict[str, int]:
        # Completed jobs are deleted; a failed one stays, with its attempts.
        return {TABLE: int(scalar(self.db_dsn, f"SELECT count(*) FROM {SCHEMA}.{TABLE}"))}

    def stored(self) -> int:
        return self.pending()[TABLE]

    # -- the drain -----------------------------------------------------------------------

    def drain_once(self, n: int, timeout: float) -> dict[str, Any]:
        node = shutil.which("node")
        if not node or self.problem():
            raise BenchmarkError(f"graphile: {self.problem() or 'node is not on PATH'}")
        spec = {"modules": str(cache_dir()), "connectionString": node_url(self.db_dsn),
                "schema": SCHEMA, "jobs": n, "addBatch": ADD_BATCH,
                "concurrentJobs": CONCURRENT_JOBS, "maxPoolSize": MAX_POOL_SIZE,
                "localQueueSize": LOCAL_QUEUE_SIZE,
                "completeJobBatchDelay": COMPLETE_JOB_BATCH_DELAY, "timeoutSeconds": timeout}
        try:
            # The drain is bounded by the script's own timeout; storing the jobs
            # comes on top (addJobs stores tens of thousands per second).
            proc = subprocess.run([node, str(SCRIPT)], input=json.dumps(spec),
                                  capture_output=True, text=True, cwd=cache_dir(),
                                  timeout=timeout + 120 + n / 2_000,
                                  env={**os.environ, "NO_LOG_SUCCESS": "1"})
        except subprocess.TimeoutExpired:
            raise BenchmarkError(f"graphile_drain.mjs did not finish ({n:,} jobs)") from None
        if proc.returncode != 0:
            raise BenchmarkError(f"graphile_drain.mjs failed: {proc.stderr.strip()[-2000:]}")
        out = json.loads(proc.stdout.strip().splitlines()[-1])
        if out["duplicates"] or out["foreign"]:
            raise BenchmarkError(f"drain: {n} jobs in, {out['ran']} task calls, "
                                 f"{out['duplicates']} of them a job that had run already, "
                                 f"{out['foreign']} for jobs never enqueued")
        if out["timed_out"]:
            _log(f"[drain] graphile: {out['distinct']:,} of {n:,} jobs ran within "
                 f"{timeout:g} s")
        return {"started": out["started"], "first_start": out["first_start"],
                "ended": out["ended"], "handled": out["ran"],
                "preload_seconds": out["add_seconds"]}
