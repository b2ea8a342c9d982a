-- Named statements used by jobqueue. Each starts with "-- name: NAME".
-- {schema} is the quoted schema identifier; parameters use psycopg's %(name)s.

-- name: schema_probe
-- Returns NULL where the schema has not been migrated: to_regclass never
-- raises, so probing cannot poison a caller's transaction.
SELECT to_regclass(%(table)s) IS NOT NULL AS migrated;

-- name: insert_job
-- One statement inserts and notifies, so it is atomic even on an autocommit
-- connection, and the NOTIFY is delivered exactly when the job commits.
-- Postgres folds identical notifications of one transaction into one, so many
-- enqueues in one transaction still cost a single NOTIFY at commit.
WITH job AS (
    INSERT INTO {schema}.jobs (queue, task, args, priority, run_at, max_attempts, unique_key)
    VALUES (%(queue)s, %(task)s, %(args)s::jsonb, %(priority)s,
            COALESCE(%(run_at)s::timestamptz,
                     now() + make_interval(secs => %(delay)s::float8)),
            %(max_attempts)s, %(unique_key)s)
    ON CONFLICT (unique_key) WHERE unique_key IS NOT NULL DO NOTHING
    RETURNING id, queue, run_at
)
SELECT job.id,
       CASE WHEN job.run_at <= now() THEN pg_notify(%(channel)s, job.queue) END
FROM job;

-- name: find_unique_job
SELECT id FROM {schema}.jobs WHERE unique_key = %(unique_key)s;

-- name: insert_jobs
-- Bulk enqueue in one round trip: arrays in, one row per element, ids out in
-- input order, one NOTIFY per distinct ready queue.
WITH job AS (
    INSERT INTO {schema}.jobs (queue, task, args, priority, run_at, max_attempts)
    SELECT u.queue, u.task, u.args, u.priority,
           COALESCE(%(run_at)s::timestamptz,
                    now() + make_interval(secs => %(delay)s::float8)),
           u.max_attempts
    FROM unnest(%(queues)s::text[], %(tasks)s::text[], %(args)s::jsonb[],
                %(priorities)s::smallint[], %(max_attempts)s::integer[])
         WITH ORDINALITY AS u(queue, task, args, priority, max_attempts, ord)
    ORDER BY u.ord
    RETURNING id, queue, run_at
), notified AS (
    SELECT count(pg_notify(%(channel)s, ready.queue)) AS n
    FROM (SELECT DISTINCT queue FROM job WHERE run_at <= now()) AS ready
)
SELECT job.id FROM job CROSS JOIN notified ORDER BY job.id;

-- name: claim_jobs
-- SKIP LOCKED lets any number of workers claim concurrently without waiting on
-- each other's row locks; the inner SELECT walks jobs_ready_idx.
UPDATE {schema}.jobs AS j
SET state = 'running',
    attempts = j.attempts + 1,
    locked_by = %(worker_id)s,
    locked_until = now() + make_interval(secs => %(lease)s::float8)
FROM (
    SELECT id FROM {schema}.jobs
    WHERE queue = ANY(%(queues)s::text[]) AND state = 'queued' AND run_at <= now()
    ORDER BY priority, run_at, id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
) AS claimed
WHERE j.id = claimed.id
RETURNING j.id, j.queue, j.task, j.args, j.attempts, j.max_attempts, j.priority,
          j.run_at, j.created_at;

-- name: next_run_at
-- How long the fetcher may sleep: the earliest scheduled job of its queues.
SELECT min(run_at) FROM {schema}.jobs
WHERE queue = ANY(%(queues)s::text[]) AND state = 'queued';

-- name: ack_succeeded
-- The locked_by guard: only the worker holding a job's lease may finish it.
-- A worker that lost its lease (rescued as crashed) changes nothing.
DELETE FROM {schema}.jobs
WHERE id = ANY(%(ids)s::bigint[]) AND locked_by = %(worker_id)s;

-- name: ack_retry
UPDATE {schema}.jobs AS j
SET state = 'queued',
    run_at = now() + make_interval(secs => u.delay),
    errors = j.errors || jsonb_build_array(u.error),
    locked_by = NULL,
    locked_until = NULL
FROM unnest(%(ids)s::bigint[], %(attempts)s::integer[], %(delays)s::float8[],
            %(errors)s::jsonb[]) AS u(id, attempt, delay, error)
-- The attempt guard makes a re-sent flush harmless even if this worker has
-- claimed the same job again in the meantime.
WHERE j.id = u.id AND j.locked_by = %(worker_id)s AND j.attempts = u.attempt;

-- name: ack_dead
-- Moving a job to dead_jobs is one statement: the DELETE and the INSERT commit
-- together or not at all, so a job is never in both tables or in neither.
WITH gone AS (
    DELETE FROM {schema}.jobs AS j
    USING unnest(%(ids)s::bigint[], %(reasons)s::text[], %(errors)s::jsonb[])
          AS u(id, reason, error)
    WHERE j.id = u.id AND j.locked_by = %(worker_id)s
    RETURNING j.id, j.queue, j.task, j.args, j.priority, j.run_at, j.attempts,
              j.max_attempts, j.unique_key, j.cron_name, j.replay_of, j.created_at,
              CASE WHEN u.error IS NULL THEN j.errors
                   ELSE j.errors || jsonb_build_array(u.error) END AS errors,
              u.reason
)
INSERT INTO {schema}.dead_jobs (id, queue, task, args, priority, run_at, attempts,
                                max_attempts, unique_key, cron_name, replay_of,
                                created_at, errors, reason)
SELECT id, queue, task, args, priority, run_at, attempts, max_attempts, unique_key,
       cron_name, replay_of, created_at, errors, reason
FROM gone;

-- name: release_jobs
-- Graceful shutdown: hand unfinished jobs back without counting the attempt
-- the claim had counted.
UPDATE {schema}.jobs
SET state = 'queued', attempts = attempts - 1, locked_by = NULL, locked_until = NULL
WHERE locked_by = %(worker_id)s AND state = 'running'
RETURNING id;

-- name: register_worker
INSERT INTO {schema}.workers (id, hostname, pid, queues, concurrency)
VALUES (%(worker_id)s, %(hostname)s, %(pid)s, %(queues)s, %(concurrency)s)
ON CONFLICT (id) DO UPDATE SET heartbeat_at = now();

-- name: set_worker_session
-- Run on the worker's LISTEN connection: records which Postgres session is the
-- worker's, so that the leader can tell when it is gone.
UPDATE {schema}.workers
SET backend_pid = pg_backend_pid(),
    backend_start = (SELECT backend_start FROM pg_stat_activity WHERE pid = pg_backend_pid())
WHERE id = %(worker_id)s;

-- name: deregister_worker
DELETE FROM {schema}.workers WHERE id = %(worker_id)s;

-- name: heartbeat_jobs
UPDATE {schema}.jobs
SET locked_until = now() + make_interval(secs => %(lease)s::float8)
WHERE locked_by = %(worker_id)s AND state = 'running';

-- name: heartbeat_worker
UPDATE {schema}.workers SET heartbeat_at = now() WHERE id = %(worker_id)s RETURNING id;

-- name: try_leadership
-- Transaction-scoped, so it is released at COMMIT and works through PgBouncer
-- in transaction mode, where a session-level lock could leak to another client.
SELECT pg_try_advisory_xact_lock(%(key)s);

-- name: reap_workers
-- A worker is gone when its heartbeat is older than the timeout, or, sooner,
-- when its LISTEN session has ended and it has also missed a heartbeat (the
-- grace covers a worker that is just reconnecting its listener).
DELETE FROM {schema}.workers AS w
WHERE w.heartbeat_at < now() - make_interval(secs => %(worker_timeout)s::float8)
   OR (w.backend_pid IS NOT NULL
       AND w.heartbeat_at < now() - make_interval(secs => %(session_grace)s::float8)
       AND NOT EXISTS (
           SELECT 1 FROM pg_stat_activity AS a
           WHERE a.pid = w.backend_pid
             AND (a.backend_start IS NULL OR a.backend_start = w.backend_start)))
RETURNING w.id;

-- name: rescue_dead
-- Jobs of a lost worker count the attempt that crashed; those out of attempts
-- are dead with reason 'crashed', so a job that kills its worker cannot
-- crash-loop the fleet.
WITH gone AS (
    DELETE FROM {schema}.jobs AS j
    WHERE j.state = 'running'
      AND j.attempts >= j.max_attempts
      AND (j.locked_until < now()
           OR NOT EXISTS (SELECT 1 FROM {schema}.workers AS w WHERE w.id = j.locked_by))
    RETURNING j.*
)
INSERT INTO {schema}.dead_jobs (id, queue, task, args, priority, run_at, attempts,
                                max_attempts, unique_key, cron_name, replay_of,
                                created_at, errors, reason)
SELECT id, queue, task, args, priority, run_at, attempts, max_attempts, unique_key,
       cron_name, replay_of, created_at,
       errors || jsonb_build_array(jsonb_build_object(
           'at', now(), 'attempt', attempts, 'worker', locked_by, 'type', 'WorkerLost',
           'message', 'the worker running this job died or lost its lease',
           'traceback', NULL)),
       'crashed'
FROM gone
RETURNING id;

-- name: rescue_requeue
UPDATE {schema}.jobs AS j
SET state = 'queued',
    run_at = now(),
    locked_by = NULL,
    locked_until = NULL,
    errors = j.errors || jsonb_build_array(jsonb_build_object(
        'at', now(), 'attempt', j.attempts, 'worker', j.locked_by, 'type', 'WorkerLost',
        'message', 'the worker running this job died or lost its lease',
        'traceback', NULL))
WHERE j.state = 'running'
  AND (j.locked_until < now()
       OR NOT EXISTS (SELECT 1 FROM {schema}.workers AS w WHERE w.id = j.locked_by))
RETURNING j.id;

-- name: queue_stats
WITH live AS (
    SELECT queue,
           count(*) FILTER (WHERE state = 'queued' AND run_at <= now()) AS queued,
           count(*) FILTER (WHERE state = 'queued' AND run_at > now()) AS scheduled,
           count(*) FILTER (WHERE state = 'running') AS running,
           extract(epoch FROM now() - min(run_at)
                   FILTER (WHERE state = 'queued' AND run_at <= now()))::float8 AS oldest_age
    FROM {schema}.jobs GROUP BY queue
), dead AS (
    SELECT queue, count(*) AS dead FROM {schema}.dead_jobs
    WHERE replayed_at IS NULL GROUP BY queue
)
SELECT COALESCE(live.queue, dead.queue) AS queue,
       COALESCE(live.queued, 0) AS queued,
       COALESCE(live.scheduled, 0) AS scheduled,
       COALESCE(live.running, 0) AS running,
       COALESCE(dead.dead, 0) AS dead,
       live.oldest_age
FROM live FULL JOIN dead ON live.queue = dead.queue
ORDER BY 1;

-- name: count_workers
SELECT count(*) FROM {schema}.workers;

-- name: fragment_dead_filter
-- The selector shared by every dead_jobs command: each filter is optional
-- (NULL means "any"), so one static statement serves every combination.
(%(ids)s::bigint[] IS NULL OR id = ANY(%(ids)s::bigint[]))
AND (%(task)s::text IS NULL OR task = %(task)s::text)
AND (%(queue)s::text IS NULL OR queue = %(queue)s::text)
AND (%(reason)s::text IS NULL OR reason = %(reason)s::text)
AND (%(error)s::text IS NULL OR strpos(lower(errors::text), lower(%(error)s::text)) > 0)
AND (%(since)s::timestamptz IS NULL OR died_at >= %(since)s::timestamptz)
AND (%(until)s::timestamptz IS NULL OR died_at < %(until)s::timestamptz)
AND (%(older_than)s::float8 IS NULL
     OR died_at < now() - make_interval(secs => %(older_than)s::float8))
AND (%(include_replayed)s::boolean OR replayed_at IS NULL)

-- name: dead_list
SELECT id, queue, task, reason, attempts, died_at,
       errors -> -1 ->> 'type' AS last_error_type,
       errors -> -1 ->> 'message' AS last_error,
       replay_count, replayed_at, replayed_as
FROM {schema}.dead_jobs
WHERE {dead_filter}
ORDER BY died_at DESC, id DESC
LIMIT %(limit)s;

-- name: dead_count
SELECT count(*) FROM {schema}.dead_jobs WHERE {dead_filter};

-- name: dead_show
SELECT id, queue, task, args, priority, run_at, attempts, max_attempts, unique_key,
       cron_name, replay_of, created_at, died_at, reason, errors, replay_count,
       replayed_at, replayed_as
FROM {schema}.dead_jobs WHERE id = %(id)s;

-- name: dead_replay
-- One batch of a replay: new jobs are inserted and the dead rows marked with
-- when and as which job they were replayed, in one statement. A dead job whose
-- unique_key is held by a live job again is skipped (it stays dead, unmarked).
-- Batches walk the ids upwards (after_id), so skipped rows are not picked again.
WITH picked AS (
    SELECT id FROM {schema}.dead_jobs
    WHERE {dead_filter} AND id > %(after_id)s
    ORDER BY id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), inserted AS (
    INSERT INTO {schema}.jobs (queue, task, args, priority, max_attempts, unique_key,
                               cron_name, replay_of)
    SELECT d.queue, d.task, d.args, d.priority, d.max_attempts, d.unique_key, d.cron_name, d.id
    FROM {schema}.dead_jobs AS d JOIN picked USING (id)
    ORDER BY d.id
    ON CONFLICT (unique_key) WHERE unique_key IS NOT NULL DO NOTHING
    RETURNING id, replay_of, queue
), marked AS (
    UPDATE {schema}.dead_jobs AS d
    SET replayed_at = now(), replayed_as = i.id, replay_count = d.replay_count + 1
    FROM inserted AS i
    WHERE d.id = i.replay_of
    RETURNING d.id AS dead_id, i.id AS job_id
), notified AS (
    SELECT count(pg_notify(%(channel)s, q.queue)) AS n
    FROM (SELECT DISTINCT queue FROM inserted) AS q
)
SELECT marked.dead_id, marked.job_id,
       (SELECT count(*) FROM picked) AS picked, (SELECT max(id) FROM picked) AS last_id
FROM notified LEFT JOIN marked ON true
ORDER BY marked.dead_id;

-- name: dead_purge
DELETE FROM {schema}.dead_jobs WHERE {dead_filter} RETURNING id;
