"""Dashboard page timings at size: ``python -m benchmarks dashboard``.

A schema of its own is filled with 1M history rows, 100k dead jobs, an hour
of outcome buckets and 10k queued jobs (by INSERT ... SELECT: the harness, not
jobqueue, writes them), then each page is fetched through the ASGI app
in-process (no network, no browser: the server's time to render it), warmed
once, timed ``repeats`` times. The issue's target is 300 ms per page.
"""

from __future__ import annotations

import statistics
import time
import uuid
from typing import Any

import psycopg
from psycopg import sql

TARGET_MS = 300.0

FILL = [
    # History: finished over the last hour, 20 tasks on 5 queues, kept a week.
    """INSERT INTO {schema}.job_history (id, queue, task, args, result, attempts, max_attempts,
                                      priority, errors, worker, created_at, started_at,
                                      finished_at, expires_at)
       SELECT g, 'q' || (g %% 5), 'task' || (g %% 20), jsonb_build_object('n', g), to_jsonb(g),
              1, 5, 0, '[]', 'w1', now() - interval '2 hours',
              now() - (g %% 3600) * interval '1 second' - interval '1 second',
              now() - (g %% 3600) * interval '1 second', now() + interval '7 days'
       FROM generate_series(1, %(history)s) AS g""",
    """INSERT INTO {schema}.dead_jobs (id, queue, task, args, priority, run_at, attempts,
                                    max_attempts, errors, created_at, died_at, reason)
       SELECT 100000000 + g, 'q' || (g %% 5), 'task' || (g %% 20), jsonb_build_object('n', g),
              0, now(), 5, 5,
              jsonb_build_array(jsonb_build_object('attempt', 5, 'at', now()::text,
                                                   'worker', 'w1', 'type', 'ValueError',
                                                   'message', 'boom ' || g)),
              now() - interval '1 day', now() - g * interval '1 second', 'exhausted'
       FROM generate_series(1, %(dead)s) AS g""",
    """INSERT INTO {schema}.job_counts (queue, bucket, succeeded, retried, dead)
       SELECT 'q' || q, date_bin('10 seconds', now(), timestamptz '1970-01-01')
                        - b * interval '10 seconds', 50 + b %% 7, b %% 3, b %% 2
       FROM generate_series(0, 4) AS q, generate_series(0, 359) AS b""",
    """INSERT INTO {schema}.jobs (queue, task, args)
       SELECT 'q' || (g %% 5), 'task' || (g %% 20), jsonb_build_object('n', g)
       FROM generate_series(1, %(queued)s) AS g""",
]


def measure(dsn: str, history: int = 1_000_000, dead: int = 100_000, queued: int = 10_000,
            repeats: int = 5) -> dict[str, Any]:
    from starlette.testclient import TestClient

    from jobqueue import JobQueue
    from jobqueue.dashboard import asgi_app
    from jobqueue.dashboard.security import Auth

    schema = f"jq_dash_{uuid.uuid4().hex[:8]}"
    app = JobQueue(dsn, schema=schema)
    app.migrate()
    ident = sql.Identifier(schema)
    try:
        started = time.perf_counter()
        with psycopg.connect(dsn, autocommit=True) as conn:
            for statement in FILL:
                conn.execute(sql.SQL(statement).format(schema=ident),  # type: ignore[arg-type]
                             {"history": history, "dead": dead, "queued": queued})
            conn.execute(sql.SQL("VACUUM ANALYZE {}.job_history").format(ident))
            conn.execute(sql.SQL("VACUUM ANALYZE {}.dead_jobs").format(ident))
            conn.execute(sql.SQL("VACUUM ANALYZE {}.jobs").format(ident))
        filled = time.perf_counter() - started
        pages = ["/", "/running", "/dead", "/dead?task=task3", "/dead?queue=q2&reason=exhausted",
                 f"/dead?error=boom%20{dead - 1}", "/history", "/history?task=task3",
                 f"/jobs/{100000000 + dead // 2}", "/workers", "/cron", "/doctor",
                 "/api/overview", "/api/dead", "/api/history"]
        if history:
            pages.append(f"/jobs/{history // 2}")
        timings: dict[str, dict[str, float]] = {}
        with TestClient(asgi_app(app, auth=Auth()), base_url="http://127.0.0.1") as client:
            for path in pages:
                response = client.get(path)  # warm: pools, plans, templates
                if response.status_code != 200:
                    raise RuntimeError(f"{path}: HTTP {response.status_code}")
                runs = []
                for _ in range(repeats):
                    t0 = time.perf_counter()
                    client.get(path)
                    runs.append((time.perf_counter() - t0) * 1000)
                timings[path] = {"median_ms": round(statistics.median(runs), 1),
                                 "max_ms": round(max(runs), 1)}
    finally:
        app.close()
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(ident))
    worst = max(t["max_ms"] for t in timings.values())
    return {"history_rows": history, "dead_jobs": dead, "queued_jobs": queued,
            "fill_seconds": round(filled, 1), "repeats": repeats, "pages": timings,
            "worst_ms": worst, "target_ms": TARGET_MS, "met": worst <= TARGET_MS}
