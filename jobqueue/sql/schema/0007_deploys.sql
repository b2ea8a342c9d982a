-- jobqueue schema, revision 0007: payload versions and queue backpressure.
-- The schema placeholder is replaced by the quoted schema identifier.

-- The version of its task's payload a job was enqueued for
-- (@app.task(version=N)). During a rolling deploy old and new workers share a
-- queue: a worker upgrades older args before it calls the handler, and hands
-- back (without counting an attempt) a job newer than it knows. A constant
-- default is stored in the catalog (Postgres 11+), so adding it does not
-- rewrite the table, and every job enqueued before stays version 1.
ALTER TABLE {schema}.jobs ADD COLUMN version integer NOT NULL DEFAULT 1;
-- A dead job keeps it, so that a replay is upgraded like any older job.
ALTER TABLE {schema}.dead_jobs ADD COLUMN version integer NOT NULL DEFAULT 1;
-- And so does a succeeded one in job_history, so app.job(id) and job show tell
-- which version a job ran as, wherever it is. (On the partitioned parent: the
-- partitions have it too.)
ALTER TABLE {schema}.job_history ADD COLUMN version integer NOT NULL DEFAULT 1;

-- Backpressure: at most max_ready jobs waiting in the queue before enqueue
-- pushes back, by a warning (and a metric) or, with reject_when_full, by
-- raising QueueFull before anything is inserted.
ALTER TABLE {schema}.queues
    ADD COLUMN max_ready integer CONSTRAINT queues_max_ready_check CHECK (max_ready > 0),
    ADD COLUMN reject_when_full boolean NOT NULL DEFAULT false;

-- How many jobs of a queue are ready now, counted no further than cap (the
-- check of an enqueue into a queue with max_ready): an index-only walk of
-- jobs_oldest_idx that stops after cap entries, the same at any backlog. A
-- function, for its SET: planned inline, the count's LIMIT is unknown to the
-- planner, which then costs it at a tenth of the backlog and, past a few
-- hundred thousand ready jobs, JIT-compiles the statement, 150 ms to run a
-- 1 ms walk (measured at 1M). SET keeps it out of line and JIT off.
CREATE FUNCTION {schema}.ready_capped(queue_name text, cap integer) RETURNS integer
LANGUAGE sql STABLE
SET jit = off
AS $$
    SELECT count(*)::integer
    FROM (SELECT 1 FROM {schema}.jobs AS j
          WHERE j.queue = queue_name AND j.state = 'queued' AND j.run_at <= now()
          ORDER BY j.run_at
          LIMIT cap) AS capped
$$;
