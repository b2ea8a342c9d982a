-- Named statements used by jobqueue. Each starts with "-- name: NAME".
-- {schema} is the quoted schema identifier; parameters use psycopg's %(name)s.

-- name: schema_probe
-- 'ok', 'missing' (not migrated) or 'no_usage' (the role may not use the
-- schema), without raising, so that probing cannot poison a caller's
-- transaction: to_regclass raises "permission denied for schema" without
-- USAGE, so it is only asked once the privilege is known (CASE evaluates in order).
SELECT CASE WHEN n.oid IS NULL THEN 'missing'
            WHEN NOT has_schema_privilege(n.oid, 'USAGE') THEN 'no_usage'
            WHEN to_regclass(%(table)s) IS NULL THEN 'missing'
            ELSE 'ok' END AS state
FROM (SELECT) AS one
LEFT JOIN pg_namespace AS n ON n.nspname = %(schema)s;

-- name: version_table_probe
-- Whether jobqueue's Alembic version table exists in the schema (to_regclass
-- never raises on a missing table).
SELECT to_regclass(%(table)s) IS NOT NULL AS present;

-- name: schema_revision
SELECT version_num FROM {schema}.jobqueue_alembic_version;

-- name: insert_job
-- One statement inserts and notifies, so it is atomic even on an autocommit
-- connection, and the NOTIFY is delivered exactly when the job commits.
-- Postgres folds identical notifications of one transaction into one, so many
-- enqueues in one transaction still cost a single NOTIFY at commit.
WITH job AS (
    INSERT INTO {schema}.jobs (queue, task, args, priority, run_at, max_attempts, unique_key,
                               correlation_id, lock_key, trace_context, version)
    VALUES (%(queue)s, %(task)s, %(args)s::jsonb, %(priority)s,
            COALESCE(%(run_at)s::timestamptz,
                     now() + make_interval(secs => %(delay)s::float8)),
            %(max_attempts)s, %(unique_key)s, %(correlation_id)s::text, %(lock_key)s::text,
            %(trace_context)s::jsonb, %(version)s::integer)
    ON CONFLICT (unique_key) WHERE unique_key IS NOT NULL DO NOTHING
    RETURNING id, queue, run_at
), notified AS (
    SELECT count(pg_notify(%(channel)s, job.queue)) AS n FROM job WHERE job.run_at <= now()
)
SELECT job.id FROM job CROSS JOIN notified;

-- name: job_is_live
SELECT EXISTS (SELECT 1 FROM {schema}.jobs WHERE id = %(id)s);

-- name: find_unique_job
SELECT id FROM {schema}.jobs WHERE unique_key = %(unique_key)s;

-- name: insert_jobs
-- Bulk enqueue in one round trip: arrays in, one row per element, ids out in
-- input order, one NOTIFY per distinct ready queue.
WITH job AS (
    INSERT INTO {schema}.jobs (queue, task, args, priority, run_at, max_attempts,
                               correlation_id, lock_key, trace_context, version)
    SELECT u.queue, u.task, u.args, u.priority,
           COALESCE(%(run_at)s::timestamptz,
                    now() + make_interval(secs => %(delay)s::float8)),
           u.max_attempts, %(correlation_id)s::text, %(lock_key)s::text,
           %(trace_context)s::jsonb, u.version
    FROM unnest(%(queues)s::text[], %(tasks)s::text[], %(args)s::jsonb[],
                %(priorities)s::smallint[], %(max_attempts)s::integer[],
                %(versions)s::integer[])
         WITH ORDINALITY AS u(queue, task, args, priority, max_attempts, version, ord)
    ORDER BY u.ord
    RETURNING id, queue, run_at
), notified AS (
    SELECT count(pg_notify(%(channel)s, ready.queue)) AS n
    FROM (SELECT DISTINCT queue FROM job WHERE run_at <= now()) AS ready
)
SELECT job.id FROM job CROSS JOIN notified ORDER BY job.id;

-- name: reserve_job_ids
-- Bulk enqueue by COPY (enqueue_many of many jobs), step 1 of 2. COPY cannot
-- return the ids it inserts, so they are drawn here first, in input order
-- (COPY stores the given value even in an identity column). The jobs' shared
-- run_at comes back as this session prints it, for COPY to read back as is.
-- One NOTIFY per distinct queue when the jobs are due now: delivered at COMMIT,
-- so only if the COPY that follows commits too.
WITH due AS (
    SELECT COALESCE(%(run_at)s::timestamptz,
                    now() + make_interval(secs => %(delay)s::float8)) AS run_at
)
SELECT ARRAY(SELECT nextval(pg_get_serial_sequence(%(table)s, 'id'))
             FROM generate_series(1, %(n)s)) AS ids,
       due.run_at::text,
       (SELECT count(pg_notify(%(channel)s, q)) FROM unnest(%(queues)s::text[]) AS q
        WHERE due.run_at <= now()) AS notified
FROM due;

-- name: copy_jobs
-- Step 2: the rows, in COPY's text format (see enqueue.copy_rows).
COPY {schema}.jobs (id, queue, task, args, priority, run_at, max_attempts, version,
                    correlation_id, lock_key, trace_context)
FROM STDIN;

-- name: next_run_at
-- How long the fetcher may sleep: the earliest scheduled job of its queues,
-- read per queue from the head of jobs_oldest_idx.
SELECT min(head.run_at)
FROM unnest(%(queues)s::text[]) AS q(name)
CROSS JOIN LATERAL (
    SELECT run_at FROM {schema}.jobs
    WHERE queue = q.name AND state = 'queued'
    ORDER BY run_at
    LIMIT 1
) AS head;

-- name: ack_succeeded
-- Success, in one statement: the job leaves jobs and, unless its task keeps no
-- history (keep 0), enters job_history with its result, so a job is never in
-- neither table nor in both. Guarded by the lease holder and the attempt: a
-- worker that lost its lease (rescued, claimed again elsewhere) changes
-- nothing, and a transactional handler's transaction then rolls back.
--
-- Each job's own values come in one jsonb object keyed by job id ({{id: [attempt,
-- keep, result, progress]}}), looked up per row, not as arrays joined with
-- unnest: the planner believes no row is locked by this worker (statistics
-- from before the claim) and nested such a join over both sides, 500 x 500
-- comparisons per flush (measured: 50 ms, against 2 ms with the lookup). The
-- DELETE stays a single-table scan on jobs_pkey.
WITH done AS (
    DELETE FROM {schema}.jobs AS j
    WHERE j.id = ANY(%(ids)s::bigint[]) AND j.locked_by = %(worker_id)s
      AND j.attempts = (%(per_job)s::jsonb -> j.id::text ->> 0)::integer
    RETURNING j.*, %(per_job)s::jsonb -> j.id::text AS mine
), kept AS (
    INSERT INTO {schema}.job_history (id, queue, task, args, result, attempts, max_attempts,
                                      priority, errors, progress, correlation_id, replay_of,
                                      cron_name, worker, created_at, started_at, finished_at,
                                      expires_at, workflow_id, version)
    SELECT id, queue, task, args, nullif(mine -> 2, 'null'), attempts, max_attempts, priority,
           errors, coalesce(nullif(mine -> 3, 'null'), progress), correlation_id, replay_of,
           cron_name, %(worker_id)s, created_at, started_at, statement_timestamp(),
           statement_timestamp() + make_interval(secs => (mine ->> 1)::float8), workflow_id,
           version
    FROM done WHERE (mine ->> 1)::float8 > 0
), advanced AS (
    -- Workflow nodes: each edge from a job that succeeded here is done, with its
    -- result (what the waiting node will read as ctx.parent_results) ...
    UPDATE {schema}.job_deps AS d SET done = true, result = nullif(s.mine -> 2, 'null')
    FROM done AS s
    WHERE s.workflow_id IS NOT NULL AND d.depends_on = s.id AND NOT d.done
    RETURNING d.job_id
), released AS (
    -- ... and a node whose last dependency that was becomes claimable. Two acks
    -- of a chord's last members at the same instant both update its row: the
    -- second waits for the first's row lock, then re-reads the row, so exactly
    -- one of them sees the count reach zero (fan-in exactly once).
    UPDATE {schema}.jobs AS w
    SET waiting = w.waiting - a.n,
        state = CASE WHEN w.waiting - a.n <= 0 THEN 'queued' ELSE 'waiting' END,
        run_at = CASE WHEN w.waiting - a.n <= 0 THEN now() ELSE w.run_at END
    FROM (SELECT job_id, count(*)::integer AS n FROM advanced GROUP BY job_id) AS a
    WHERE w.id = a.job_id AND w.state = 'waiting'
    RETURNING w.queue, w.state
), woken AS (
    SELECT count(pg_notify(%(channel)s, q.queue)) AS n
    FROM (SELECT DISTINCT queue FROM released WHERE state = 'queued') AS q
), {notify_awaited}
SELECT done.id FROM done CROSS JOIN notified CROSS JOIN woken;

-- name: fragment_notify_awaited
-- The end of every statement that finishes jobs ("done" holds their rows):
-- one NOTIFY per few hundred finished jobs that somebody waits for (awaited),
-- their ids in the payload (under Postgres's 8000-byte limit), none otherwise.
notified AS (
    SELECT count(pg_notify(%(awaited_channel)s, chunk.ids)) AS n
    FROM (SELECT string_agg(w.id::text, ',') AS ids
          FROM (SELECT id, (row_number() OVER ()) / 300 AS part FROM done WHERE awaited) AS w
          GROUP BY w.part) AS chunk
)

-- name: ack_retry
-- Per job {{id: [attempt, delay, error]}}, looked up per row (see ack_succeeded).
-- The attempt guard makes a re-sent flush harmless even if this worker has
-- claimed the same job again in the meantime.
UPDATE {schema}.jobs AS j
SET state = 'queued',
    run_at = now() + make_interval(secs => (%(per_job)s::jsonb -> j.id::text ->> 1)::float8),
    errors = j.errors || jsonb_build_array(%(per_job)s::jsonb -> j.id::text -> 2),
    locked_by = NULL,
    locked_until = NULL
WHERE j.id = ANY(%(ids)s::bigint[]) AND j.locked_by = %(worker_id)s
  AND j.attempts = (%(per_job)s::jsonb -> j.id::text ->> 0)::integer
RETURNING j.id;

-- name: ack_dead
-- Moving a job to dead_jobs is one statement: the DELETE and the INSERT commit
-- together or not at all, so a job is never in both tables or in neither.
-- Per job {{id: [reason, error or null]}} (see ack_succeeded).
WITH done AS (
    DELETE FROM {schema}.jobs AS j
    WHERE j.id = ANY(%(ids)s::bigint[]) AND j.locked_by = %(worker_id)s
    RETURNING j.*, %(per_job)s::jsonb -> j.id::text ->> 0 AS reason,
              nullif(%(per_job)s::jsonb -> j.id::text -> 1, 'null') AS new_error
), dead AS (
    INSERT INTO {schema}.dead_jobs ({dead_columns}, errors, reason)
    SELECT {dead_columns},
           CASE WHEN new_error IS NULL THEN errors ELSE errors || jsonb_build_array(new_error) END,
           reason
    FROM done
    RETURNING id
), {fail_dependents}, {notify_awaited}
SELECT dead.id FROM dead CROSS JOIN notified;

-- name: fragment_fail_dependents
-- After "done" (jobs that just died): every workflow node waiting downstream of
-- one of them, directly or not, dies too, in the same statement, with reason
-- dependency_failed and an error naming the node whose death doomed it; so a
-- broken branch is in dead_jobs at once and nothing waits for ever.
doomed AS (
    SELECT DISTINCT ON (down.id) down.id, down.failed
    FROM (WITH RECURSIVE down(id, failed) AS (
              SELECT d.job_id, d.depends_on
              FROM {schema}.job_deps AS d JOIN done AS f ON d.depends_on = f.id
              WHERE f.workflow_id IS NOT NULL
              UNION
              SELECT d.job_id, down.failed
              FROM {schema}.job_deps AS d JOIN down ON d.depends_on = down.id)
          SELECT id, failed FROM down) AS down
    ORDER BY down.id, down.failed
), doomed_gone AS (
    -- "= ANY(ARRAY(...))", not a join with doomed: the planner, sure that no row
    -- waits, would otherwise read jobs whole on every dead-letter (as in the claim).
    DELETE FROM {schema}.jobs AS j
    WHERE j.id = ANY(ARRAY(SELECT id FROM doomed)) AND j.state = 'waiting'
    RETURNING j.*, (SELECT failed FROM doomed WHERE doomed.id = j.id) AS failed
), doomed_dead AS (
    INSERT INTO {schema}.dead_jobs ({dead_columns}, errors, reason)
    SELECT {dead_columns},
           errors || jsonb_build_array(jsonb_build_object(
               'at', now(), 'attempt', attempts, 'worker', NULL, 'type', 'DependencyFailed',
               'message', 'job ' || failed || ', which it depends on, is dead',
               'traceback', NULL)),
           'dependency_failed'
    FROM doomed_gone
)

-- name: job_owners
-- Who holds these jobs now (for jobs whose outcome this worker could not write).
SELECT id, locked_by FROM {schema}.jobs WHERE id = ANY(%(ids)s::bigint[]);

-- name: release_jobs
-- Hand unfinished jobs back without counting the attempt the claim had
-- counted (a graceful shutdown; a job for a newer payload version than this
-- worker knows): these ids, or (NULL) all of the worker's. A delay keeps them
-- from this worker's next claim for a while, which a rolling deploy's newer
-- workers use.
UPDATE {schema}.jobs
SET state = 'queued', attempts = attempts - 1, locked_by = NULL, locked_until = NULL,
    run_at = CASE WHEN %(delay)s::float8 > 0
                  THEN now() + make_interval(secs => %(delay)s::float8) ELSE run_at END
WHERE locked_by = %(worker_id)s AND state = 'running'
  AND (%(ids)s::bigint[] IS NULL OR id = ANY(%(ids)s::bigint[]))
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
-- Only the jobs the worker really holds (running, or finished with the
-- outcome not yet written): a job whose claim committed but whose reply never
-- reached the worker is not extended, so its lease runs out and it is rescued.
UPDATE {schema}.jobs
SET locked_until = now() + make_interval(secs => %(lease)s::float8)
WHERE id = ANY(%(ids)s::bigint[]) AND locked_by = %(worker_id)s AND state = 'running'
-- Jobs cancelled while running: the fallback when the NOTIFY was missed.
RETURNING id, cancel_requested;

-- name: worker_session
-- Worker connections (see worker/worker.py for why each is safe and worth it).
SELECT set_config('synchronous_commit', 'off', false),
       set_config('plan_cache_mode', 'force_custom_plan', false),
       set_config('jit', 'off', false);

-- name: worker_transaction
-- worker_session for one transaction: behind a transaction pooler the worker
-- has no session of its own to keep settings in (a session-level SET would
-- land on a server connection other clients use next). Only the claim needs
-- them (see worker_pool for why jit is off); without prepared statements
-- there, every plan is a custom plan already.
SELECT set_config('synchronous_commit', 'off', true),
       set_config('jit', 'off', true);

-- name: listen
LISTEN {channel};

-- name: heartbeat_worker
UPDATE {schema}.workers SET heartbeat_at = now() WHERE id = %(worker_id)s RETURNING id;

-- name: try_leadership
-- Transaction-scoped, so it is released at COMMIT and works through PgBouncer
-- in transaction mode, where a session-level lock could leak to another client.
-- A leader frozen mid-round (SIGSTOP, a VM stall) would keep its transaction,
-- and the lock, open for as long as it is frozen, and no other worker could
-- reap it: past a few idle seconds inside the round Postgres ends its session.
SELECT pg_try_advisory_xact_lock(%(key)s) AS leader,
       set_config('idle_in_transaction_session_timeout', '10s', true) AS bounded;

-- name: reap_workers
-- A worker is gone when its heartbeat is older than the timeout, or, sooner,
-- when its LISTEN session has ended and it has also missed a heartbeat (the
-- grace covers a worker that is just reconnecting its listener).
-- A restart of the server ends every session and silences every heartbeat at
-- once, which says nothing about the workers: silence counts from the server's
-- start at the earliest, and a session older than the server is no evidence.
DELETE FROM {schema}.workers AS w
WHERE greatest(w.heartbeat_at, pg_postmaster_start_time())
      < now() - make_interval(secs => %(worker_timeout)s::float8)
   OR (w.backend_pid IS NOT NULL
       AND w.backend_start > pg_postmaster_start_time()
       AND w.heartbeat_at < now() - make_interval(secs => %(session_grace)s::float8)
       AND NOT EXISTS (
           SELECT 1 FROM pg_stat_activity AS a
           WHERE a.pid = w.backend_pid
             AND (a.backend_start IS NULL OR a.backend_start = w.backend_start)))
RETURNING w.id;

-- name: fragment_dead_columns
-- The columns a job takes with it into dead_jobs (besides errors and reason),
-- listed once for every statement that moves jobs there.
id, queue, task, args, priority, run_at, attempts, max_attempts, unique_key, cron_name,
replay_of, created_at, lock_key, correlation_id, started_at, progress, workflow_id,
trace_context, version

-- name: fragment_error_entry
-- One element of a job's errors array built in SQL, for a job whose attempt
-- ended without a worker to report it (a lost worker, a cancel while queued):
-- the shape of jobqueue.outcome.ErrorEntry, its type and message passed in.
jsonb_build_object('at', now(), 'attempt', attempts, 'worker', locked_by,
                   'type', %(error_type)s::text, 'message', %(error_message)s::text,
                   'traceback', NULL)

-- name: rescue_dead
-- Jobs of a lost worker count the attempt that crashed; those out of attempts
-- are dead with reason 'crashed', so a job that kills its worker cannot
-- crash-loop the fleet.
WITH done AS (
    DELETE FROM {schema}.jobs AS j
    WHERE j.state = 'running'
      AND j.attempts >= j.max_attempts
      AND (j.locked_until < now()
           OR NOT EXISTS (SELECT 1 FROM {schema}.workers AS w WHERE w.id = j.locked_by))
    RETURNING j.*
), dead AS (
    INSERT INTO {schema}.dead_jobs ({dead_columns}, errors, reason)
    SELECT {dead_columns}, errors || jsonb_build_array({error_entry}), 'crashed'
    FROM done
    RETURNING id
), {fail_dependents}, {notify_awaited}
SELECT dead.id FROM dead CROSS JOIN notified;

-- name: rescue_requeue
UPDATE {schema}.jobs AS j
SET state = 'queued',
    run_at = now(),
    locked_by = NULL,
    locked_until = NULL,
    errors = j.errors || jsonb_build_array({error_entry})
WHERE j.state = 'running'
  AND (j.locked_until < now()
       OR NOT EXISTS (SELECT 1 FROM {schema}.workers AS w WHERE w.id = j.locked_by))
RETURNING j.id, j.queue;

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
       replayed_at, replayed_as, version
FROM {schema}.dead_jobs WHERE id = %(id)s;

-- name: dead_replay
-- One batch of a replay: new jobs are inserted and the dead rows marked with
-- when and as which job they were replayed, in one statement. A dead job whose
-- unique_key is held by a live job again is skipped (it stays dead, unmarked),
-- and so is a workflow node that died of a dependency: run now it would miss its
-- inputs and its order; it comes back when the node it died of is replayed
-- (workflow_revive). Batches walk the ids upwards (after_id), so skipped rows
-- are not picked again.
WITH picked AS (
    SELECT id FROM {schema}.dead_jobs
    WHERE {dead_filter} AND id > %(after_id)s
    ORDER BY id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), inserted AS (
    INSERT INTO {schema}.jobs (queue, task, args, priority, max_attempts, unique_key,
                               cron_name, replay_of, lock_key, correlation_id, trace_context,
                               version)
    SELECT d.queue, d.task, d.args, d.priority, d.max_attempts, d.unique_key, d.cron_name, d.id,
           d.lock_key, d.correlation_id, d.trace_context, d.version
    FROM {schema}.dead_jobs AS d JOIN picked USING (id)
    WHERE d.reason <> 'dependency_failed'
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

-- ==== queue controls and cancellation ====

-- name: queue_set_paused
INSERT INTO {schema}.queues (name, paused) VALUES (%(queue)s, %(paused)s)
ON CONFLICT (name) DO UPDATE SET paused = EXCLUDED.paused, updated_at = now();

-- name: queue_set_limits
-- NULL clears a limit; every limit is set at once (what is not given is cleared).
INSERT INTO {schema}.queues (name, max_running, rate_limit, rate_period, max_ready,
                             reject_when_full)
VALUES (%(queue)s, %(max_running)s, %(rate_limit)s, %(rate_period)s, %(max_ready)s,
        %(reject_when_full)s)
ON CONFLICT (name) DO UPDATE
SET max_running = EXCLUDED.max_running, rate_limit = EXCLUDED.rate_limit,
    rate_period = EXCLUDED.rate_period, max_ready = EXCLUDED.max_ready,
    reject_when_full = EXCLUDED.reject_when_full, updated_at = now();

-- name: queue_settings
SELECT name, paused, max_running, rate_limit, rate_period, max_ready, reject_when_full
FROM {schema}.queues
WHERE %(queues)s::text[] IS NULL OR name = ANY(%(queues)s::text[])
ORDER BY name;

-- name: backpressure_readable
-- Whether this role may read what the backpressure check reads. A producer
-- granted its rights before backpressure existed may not, and a statement
-- that reads them would fail and poison the caller's transaction: the
-- catalog is asked instead, which cannot fail (a missing column counts as
-- unreadable too). %(queues)s and %(jobs)s are the tables' qualified names.
SELECT count(*) = 6
       AND coalesce(bool_and(has_column_privilege(a.attrelid, a.attnum, 'SELECT')), false)
       AS readable
FROM (VALUES (%(queues)s::text, 'name'), (%(queues)s, 'max_ready'),
             (%(queues)s, 'reject_when_full'),
             (%(jobs)s, 'queue'), (%(jobs)s, 'state'), (%(jobs)s, 'run_at')) AS c(rel, col)
JOIN pg_attribute AS a
  ON a.attrelid = to_regclass(c.rel) AND a.attname = c.col AND NOT a.attisdropped;

-- name: backpressure
-- Every queue with a max_ready (what a producer caches for a couple of
-- seconds) and, for the queues an enqueue is about to fill (%(queues)s), its
-- ready jobs counted no further than max_ready (ready_capped, in
-- 0007_deploys.sql: an index-only walk of jobs_oldest_idx that stops after
-- max_ready entries, so the check costs the same under a backlog of 100 or of
-- 10M). CASE runs the count only for those queues. "Ready" is what `stats`
-- calls queued: due now, not scheduled for later (retries backing off, delays).
SELECT q.name AS queue, q.max_ready, q.reject_when_full,
       CASE WHEN q.name = ANY(%(queues)s::text[]) THEN
           {schema}.ready_capped(q.name, q.max_ready)
       END AS ready
FROM {schema}.queues AS q
WHERE q.max_ready IS NOT NULL
ORDER BY q.name;

-- name: grant_producer_backpressure
-- Enqueue checks the limits of the queues it fills (max_ready) and counts
-- their ready jobs: which queue and state, no args.
GRANT SELECT (name, max_ready, reject_when_full) ON {schema}.queues TO {role};
GRANT SELECT (state) ON {schema}.jobs TO {role};

-- name: notify
SELECT pg_notify(%(channel)s, %(message)s);

-- name: advisory_xact_lock
SELECT pg_advisory_xact_lock(%(key)s);

-- name: cancel_queued
-- A queued job is cancelled at once: moved to dead_jobs (reason 'cancelled')
-- in one statement, so it stays visible for audit and can be replayed.
WITH done AS (
    DELETE FROM {schema}.jobs WHERE id = %(id)s AND state IN ('queued', 'waiting')
    RETURNING *
), dead AS (
    INSERT INTO {schema}.dead_jobs ({dead_columns}, errors, reason)
    SELECT {dead_columns}, errors || jsonb_build_array({error_entry}), 'cancelled'
    FROM done
    RETURNING id
), {fail_dependents}, {notify_awaited}
SELECT dead.id FROM dead CROSS JOIN notified;

-- name: cancel_running
-- A running job is flagged; its worker hears of it by NOTIFY at once, or at
-- its next heartbeat when LISTEN is down.
UPDATE {schema}.jobs SET cancel_requested = true
WHERE id = %(id)s AND state = 'running'
RETURNING id;

-- ==== operations ====
-- Counters, the per-queue overview behind `stats` and the metrics gauges,
-- and the checks of `jobqueue doctor`.

-- name: count_outcomes
-- The completer's outcome counters in 10-second buckets: "jobs per second over
-- the last minute" without keeping a row per finished job. Rows are upserted
-- in queue order, so two workers' flushes lock them in the same order and
-- cannot deadlock on each other.
INSERT INTO {schema}.job_counts AS c (queue, bucket, succeeded, retried, dead)
SELECT u.queue, date_bin('10 seconds', now(), timestamptz '1970-01-01 00:00:00+00'),
       u.succeeded, u.retried, u.dead
FROM unnest(%(queues)s::text[], %(succeeded)s::bigint[], %(retried)s::bigint[],
            %(dead)s::bigint[]) AS u(queue, succeeded, retried, dead)
ORDER BY u.queue
ON CONFLICT (queue, bucket) DO UPDATE
SET succeeded = c.succeeded + excluded.succeeded,
    retried = c.retried + excluded.retried,
    dead = c.dead + excluded.dead;

-- name: prune_job_counts
-- Only the last minute is read; an hour is kept for people looking by hand.
DELETE FROM {schema}.job_counts
WHERE bucket < now() - make_interval(secs => %(keep)s::float8);

-- name: queue_overview
-- One row per queue that has jobs, dead jobs, outcomes in the last minute or
-- a row in queues. The rate covers the buckets of the last 50 to 60 seconds:
-- the current (partial) bucket and the five before it, divided by the time
-- they actually span. "workers" counts live workers (fresh heartbeat) that
-- serve the queue. With %(dead_cap)s, dead jobs are counted per queue up to the
-- cap, and the queues holding any are found by a loose index scan of
-- dead_jobs_queue_idx, one probe per queue (Postgres 15 has no skip scan): the
-- dashboard's overview then costs the same at 1,000 dead jobs or 1M. Without
-- it (stats, metrics, doctor) the count is exact.
WITH RECURSIVE live AS (
    SELECT queue,
           count(*) FILTER (WHERE state = 'queued' AND run_at <= now()) AS ready,
           count(*) FILTER (WHERE state = 'queued' AND run_at > now()) AS scheduled,
           count(*) FILTER (WHERE state = 'running') AS running,
           extract(epoch FROM now() - min(run_at)
                   FILTER (WHERE state = 'queued' AND run_at <= now()))::float8 AS oldest_age
    FROM {schema}.jobs GROUP BY queue
), dead_queues AS (
    (SELECT queue FROM {schema}.dead_jobs ORDER BY queue LIMIT 1)
    UNION ALL
    SELECT (SELECT d.queue FROM {schema}.dead_jobs AS d
            WHERE d.queue > dq.queue ORDER BY d.queue LIMIT 1)
    FROM dead_queues AS dq WHERE dq.queue IS NOT NULL
), dead AS (
    -- Exact (no cap): one scan, grouped; the other branch is skipped at run
    -- time (a one-time filter on the parameter), and so is dead_queues.
    SELECT queue, count(*) AS dead FROM {schema}.dead_jobs
    WHERE replayed_at IS NULL AND %(dead_cap)s::bigint IS NULL
    GROUP BY queue
    UNION ALL
    SELECT dq.queue, n.dead
    FROM dead_queues AS dq
    CROSS JOIN LATERAL (
        SELECT count(*) AS dead
        FROM (SELECT 1 FROM {schema}.dead_jobs AS d
              WHERE d.queue = dq.queue AND d.replayed_at IS NULL
              LIMIT %(dead_cap)s::bigint) AS capped) AS n
    WHERE %(dead_cap)s::bigint IS NOT NULL AND dq.queue IS NOT NULL AND n.dead > 0
), span AS (
    SELECT date_bin('10 seconds', now(), timestamptz '1970-01-01 00:00:00+00')
           - interval '50 seconds' AS since
), done AS (
    SELECT c.queue, sum(c.succeeded) AS succeeded, sum(c.retried) AS retried,
           sum(c.dead) AS dead
    FROM {schema}.job_counts AS c CROSS JOIN span
    WHERE c.bucket >= span.since
    GROUP BY c.queue
), served AS (
    SELECT q.name AS queue, count(*) AS workers
    FROM {schema}.workers AS w CROSS JOIN LATERAL unnest(w.queues) AS q(name)
    WHERE w.heartbeat_at >= now() - make_interval(secs => %(worker_timeout)s::float8)
    GROUP BY q.name
), names AS (
    SELECT queue FROM live
    UNION SELECT queue FROM dead
    UNION SELECT queue FROM done
    UNION SELECT name FROM {schema}.queues
)
SELECT names.queue,
       COALESCE(live.ready, 0) AS queued,
       COALESCE(live.scheduled, 0) AS scheduled,
       COALESCE(live.running, 0) AS running,
       COALESCE(dead.dead, 0) AS dead,
       live.oldest_age,
       COALESCE(done.succeeded, 0)::bigint AS succeeded_1m,
       COALESCE(done.retried, 0)::bigint AS retried_1m,
       COALESCE(done.dead, 0)::bigint AS dead_1m,
       extract(epoch FROM now() - span.since)::float8 AS span_seconds,
       COALESCE(q.paused, false) AS paused,
       q.max_ready,
       COALESCE(served.workers, 0) AS workers
FROM names CROSS JOIN span
LEFT JOIN live ON live.queue = names.queue
LEFT JOIN dead ON dead.queue = names.queue
LEFT JOIN done ON done.queue = names.queue
LEFT JOIN served ON served.queue = names.queue
LEFT JOIN {schema}.queues AS q ON q.name = names.queue
ORDER BY names.queue;

-- name: worker_heartbeats
SELECT id, hostname, pid, queues,
       extract(epoch FROM heartbeat_at)::float8 AS heartbeat_at,
       extract(epoch FROM now() - heartbeat_at)::float8 AS age
FROM {schema}.workers
ORDER BY id;

-- name: try_session_leadership
-- Session-scoped, on a connection kept for this purpose only: the holder stays
-- leader until its session ends, so one worker of the fleet runs the gauge
-- query. (Like LISTEN, this needs a real session, not PgBouncer's transaction
-- mode.)
SELECT pg_try_advisory_lock(%(key)s);

-- name: doctor_session
-- The doctor's own session: its statements and lock waits are bounded, so it
-- never becomes the long transaction or the stuck statement it looks for.
SELECT set_config('statement_timeout', '30s', false),
       set_config('lock_timeout', '5s', false);

-- name: doctor_transaction
-- doctor_session for one transaction: behind a transaction pooler.
SELECT set_config('statement_timeout', '30s', true),
       set_config('lock_timeout', '5s', true);

-- name: doctor_autovacuum
SELECT c.reloptions, current_setting('autovacuum') AS autovacuum,
       current_setting('track_counts') AS track_counts
FROM pg_class AS c
WHERE c.oid = to_regclass(%(table)s);

-- name: doctor_table
-- Dead tuples and sizes of the jobs table. Stats are estimates that the
-- server updates asynchronously; good enough for "is vacuum keeping up".
SELECT s.n_live_tup, s.n_dead_tup,
       extract(epoch FROM now() - greatest(s.last_vacuum, s.last_autovacuum))::float8
           AS since_vacuum,
       pg_relation_size(c.oid) AS table_bytes,
       current_setting('block_size')::int AS block_size,
       (SELECT sum(st.avg_width) FROM pg_stats AS st
        WHERE st.schemaname = %(schema)s AND st.tablename = 'jobs') AS row_width
FROM pg_class AS c
LEFT JOIN pg_stat_user_tables AS s ON s.relid = c.oid
WHERE c.oid = to_regclass(%(table)s);

-- name: doctor_history
-- History's partitions: today's (UTC) made, how many days ahead, and how many
-- rows fell into the default partition (a day without one), counted to a bound.
SELECT EXISTS (SELECT 1 FROM {schema}.history_partitions
               WHERE day = (now() AT TIME ZONE 'UTC')::date) AS today,
       (SELECT count(*) FROM {schema}.history_partitions
        WHERE day > (now() AT TIME ZONE 'UTC')::date) AS ahead,
       (SELECT count(*) FROM (SELECT 1 FROM {schema}.job_history_default LIMIT 10000) AS d)
           AS in_default;

-- name: doctor_indexes
-- Per index of jobs: its size, its entry count as of the last vacuum or
-- analyze, and the average width of its key columns (from pg_stats).
SELECT ic.relname AS name, pg_relation_size(i.indexrelid) AS bytes,
       greatest(ic.reltuples, 0)::float8 AS entries,
       (SELECT sum(COALESCE(st.avg_width, 8))
        FROM unnest(i.indkey) AS k(attnum)
        JOIN pg_attribute AS a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
        LEFT JOIN pg_stats AS st
               ON st.schemaname = %(schema)s AND st.tablename = 'jobs'
              AND st.attname = a.attname) AS key_width
FROM pg_index AS i
JOIN pg_class AS ic ON ic.oid = i.indexrelid
WHERE i.indrelid = to_regclass(%(table)s)
ORDER BY ic.relname;

-- name: doctor_transactions
-- Open transactions of this database, oldest first. backend_xid/backend_xmin
-- say whether the session holds back the xmin horizon, below which vacuum
-- may not remove dead rows (of jobs, as of every other table).
SELECT pid, usename, application_name, host(client_addr) AS client, state,
       extract(epoch FROM now() - xact_start)::float8 AS xact_age,
       extract(epoch FROM now() - state_change)::float8 AS state_age,
       age(backend_xid) AS xid_age, age(backend_xmin) AS xmin_age,
       left(regexp_replace(query, '\s+', ' ', 'g'), 120) AS query
FROM pg_stat_activity
WHERE datid = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND backend_type = 'client backend'
  AND xact_start IS NOT NULL
  AND pid <> pg_backend_pid()
ORDER BY xact_start
LIMIT 50;

-- name: doctor_horizon_backend
-- The session of this database whose snapshot or transaction id is oldest:
-- the one holding the xmin horizon for this database's tables.
SELECT pid, state, greatest(age(backend_xid), age(backend_xmin)) AS xid_age
FROM pg_stat_activity
WHERE (backend_xid IS NOT NULL OR backend_xmin IS NOT NULL)
  AND pid <> pg_backend_pid()
  AND datid = (SELECT oid FROM pg_database WHERE datname = current_database())
ORDER BY 3 DESC NULLS LAST
LIMIT 1;

-- name: doctor_prepared
SELECT gid, owner, extract(epoch FROM now() - prepared)::float8 AS age,
       age(transaction) AS xid_age
FROM pg_prepared_xacts
WHERE database = current_database()
ORDER BY prepared;

-- name: doctor_slots
-- Replication slots hold the horizon too: xmin (a standby's
-- hot_standby_feedback) for every table, catalog_xmin for the catalogs.
SELECT slot_name, slot_type, active, age(xmin) AS xmin_age,
       age(catalog_xmin) AS catalog_xmin_age
FROM pg_replication_slots
ORDER BY slot_name;

-- name: doctor_notify_queue
SELECT pg_notification_queue_usage() AS usage;

-- name: probe_notify
-- The listener's self-check: a NOTIFY from another session on the worker's
-- own probe channel, which it must see come back on its LISTEN connection.
SELECT pg_notify(%(channel)s, %(payload)s);

-- name: queue_capacity
-- How many more jobs each limited queue may start now: its max_running minus
-- what runs, and its rate limit minus what was claimed in the current window.
-- Run under the queues' advisory locks (see worker/claimer.py).
SELECT q.name,
       GREATEST(0, LEAST(
           COALESCE(q.max_running - (SELECT count(*) FROM {schema}.jobs AS j
                                     WHERE j.queue = q.name AND j.state = 'running'),
                    2147483647),
           COALESCE(q.rate_limit - COALESCE((
               SELECT w.claimed FROM {schema}.queue_windows AS w
               WHERE w.queue = q.name
                 AND w.window_start = date_bin(make_interval(secs => q.rate_period), now(),
                                               timestamptz '2000-01-01')), 0),
                    2147483647)))::integer AS capacity
FROM {schema}.queues AS q
WHERE q.name = ANY(%(queues)s::text[]);

-- name: queue_window_add
-- Counts claims of rate-limited queues in their current fixed window; windows
-- older than a day are dropped on the way.
WITH added AS (
    INSERT INTO {schema}.queue_windows (queue, window_start, claimed)
    SELECT u.queue,
           date_bin(make_interval(secs => q.rate_period), now(), timestamptz '2000-01-01'),
           u.n
    FROM unnest(%(queues)s::text[], %(counts)s::integer[]) AS u(queue, n)
    JOIN {schema}.queues AS q ON q.name = u.queue
    WHERE q.rate_period IS NOT NULL
    ON CONFLICT (queue, window_start)
    DO UPDATE SET claimed = {schema}.queue_windows.claimed + EXCLUDED.claimed
)
DELETE FROM {schema}.queue_windows
WHERE queue = ANY(%(queues)s::text[]) AND window_start < now() - interval '1 day';

-- ==== cron ====

-- name: cron_lead
-- Scheduler leadership for one round, and the database's clock, the one clock
-- all the fleet's schedulers agree on. The lock is transaction-scoped, like
-- maintenance's (under a key of its own): released at COMMIT, so a leader that
-- dies mid-round frees it at once, and it works through PgBouncer's
-- transaction mode. Fired jobs are enqueued jobs, so the round commits
-- durably even on the worker's synchronous_commit=off connections: a job seen
-- and run before a crash must not be lost with its tick, or the tick would fire again.
SELECT pg_try_advisory_xact_lock(%(key)s) AS leader,
       clock_timestamp() AS now,
       set_config('synchronous_commit', 'on', true) AS durable,
       -- A leader frozen mid-round loses its session (see try_leadership).
       set_config('idle_in_transaction_session_timeout', '10s', true) AS bounded;

-- name: cron_sync
-- The leader's schedules are upserted, and rows of schedules its app no
-- longer defines are retired. A changed expression or timezone resets the
-- cursor (next_fire_at): it was a tick of the old schedule, and a changed
-- schedule, like a new one, fires no tick from before it existed.
WITH defined AS (
    SELECT *
    FROM unnest(%(names)s::text[], %(expressions)s::text[], %(tasks)s::text[],
                %(args)s::jsonb[], %(queues)s::text[], %(timezones)s::text[],
                %(overlaps)s::text[], %(priorities)s::smallint[], %(catch_ups)s::integer[])
         AS d(name, expression, task, args, queue, timezone, overlap, priority, catch_up)
), retired AS (
    DELETE FROM {schema}.cron AS c
    WHERE NOT EXISTS (SELECT 1 FROM defined WHERE defined.name = c.name)
    RETURNING c.name
), upserted AS (
    INSERT INTO {schema}.cron AS c (name, expression, task, args, queue, timezone, overlap,
                                    priority, catch_up)
    SELECT name, expression, task, args, queue, timezone, overlap, priority, catch_up
    FROM defined
    ON CONFLICT (name) DO UPDATE
    SET expression = EXCLUDED.expression, task = EXCLUDED.task, args = EXCLUDED.args,
        queue = EXCLUDED.queue, timezone = EXCLUDED.timezone, overlap = EXCLUDED.overlap,
        priority = EXCLUDED.priority, catch_up = EXCLUDED.catch_up,
        next_fire_at = CASE
            WHEN (c.expression, c.timezone) IS DISTINCT FROM (EXCLUDED.expression, EXCLUDED.timezone)
            THEN NULL ELSE c.next_fire_at END,
        updated_at = now()
    -- Unchanged rows are not rewritten: a round per second would otherwise
    -- leave a dead tuple per schedule per second behind.
    WHERE (c.expression, c.task, c.args, c.queue, c.timezone, c.overlap, c.priority, c.catch_up)
          IS DISTINCT FROM (EXCLUDED.expression, EXCLUDED.task, EXCLUDED.args, EXCLUDED.queue,
                            EXCLUDED.timezone, EXCLUDED.overlap, EXCLUDED.priority,
                            EXCLUDED.catch_up)
    RETURNING c.name, (c.xmax = 0) AS inserted
)
SELECT 'retired' AS change, name FROM retired
UNION ALL
SELECT CASE WHEN inserted THEN 'added' ELSE 'changed' END, name FROM upserted;

-- name: cron_state
SELECT name, last_fire_at, next_fire_at
FROM {schema}.cron
WHERE name = ANY(%(names)s::text[]);

-- name: cron_fire
-- One schedule's round, all or nothing. The compare-and-set on the cron row
-- (the cursor as this leader read it) is what keeps two leaders from firing
-- one tick: the second waits on the first's row lock, re-reads the row, no
-- longer matches and inserts nothing. It holds even after the first tick's job
-- has finished and left the table, where the unique_key ('cron:<name>:<tick>',
-- unique among live jobs) could no longer tell. With overlap 'skip' only the
-- oldest chosen tick may fire, and only while no job of the schedule is queued
-- or running; the other ticks count as fired (the cursor moves past them).
WITH advanced AS (
    UPDATE {schema}.cron
    SET last_fire_at = %(last_fire_at)s::timestamptz,
        next_fire_at = %(next_fire_at)s::timestamptz,
        updated_at = now()
    WHERE name = %(name)s
      AND last_fire_at IS NOT DISTINCT FROM %(expected_last)s::timestamptz
      AND next_fire_at IS NOT DISTINCT FROM %(expected_next)s::timestamptz
    RETURNING name
), busy AS (
    SELECT EXISTS (SELECT 1 FROM {schema}.jobs WHERE cron_name = %(name)s) AS running
), fired AS (
    INSERT INTO {schema}.jobs (queue, task, args, priority, run_at, max_attempts, unique_key,
                               cron_name, trace_context, version)
    SELECT %(queue)s, %(task)s, %(args)s::jsonb, %(priority)s, t.tick, %(max_attempts)s,
           t.key, advanced.name, %(trace_context)s::jsonb, %(version)s::integer
    FROM advanced
    CROSS JOIN busy
    CROSS JOIN unnest(%(ticks)s::timestamptz[], %(keys)s::text[]) WITH ORDINALITY
         AS t(tick, key, ord)
    WHERE %(allow_overlap)s OR (NOT busy.running AND t.ord = 1)
    ORDER BY t.ord
    ON CONFLICT (unique_key) WHERE unique_key IS NOT NULL DO NOTHING
    RETURNING id, queue, run_at
), notified AS (
    SELECT count(pg_notify(%(channel)s, q.queue)) AS n
    FROM (SELECT DISTINCT queue FROM fired) AS q
)
SELECT (SELECT count(*) FROM advanced) > 0 AS advanced,
       (SELECT running FROM busy) AS busy,
       COALESCE((SELECT array_agg(id ORDER BY run_at) FROM fired), '{{}}') AS ids,
       (SELECT array_agg(run_at ORDER BY run_at) FROM fired) AS ticks,
       notified.n
FROM notified;

-- name: cron_list
SELECT name, expression, timezone, task, queue, overlap, priority, catch_up,
       last_fire_at, next_fire_at
FROM {schema}.cron
ORDER BY name;

-- name: fragment_claim_tail
-- The end of every claim: "picked" holds the candidate rows, already locked
-- FOR UPDATE SKIP LOCKED. Jobs sharing a lock_key never run at once: a
-- candidate with a key is claimed only if its key could be inserted into
-- job_locks. INSERT ... ON CONFLICT DO NOTHING is decided by Postgres between
-- concurrent transactions (the later one waits for the earlier to commit, then
-- skips), which a snapshot-based "is a job with this key running?" could not do.
locked AS (
    INSERT INTO {schema}.job_locks (lock_key, job_id)
    SELECT lock_key, id FROM picked WHERE lock_key IS NOT NULL
    ON CONFLICT (lock_key) DO NOTHING
    RETURNING job_id
)
UPDATE {schema}.jobs AS j
SET state = 'running',
    attempts = j.attempts + 1,
    locked_by = %(worker_id)s,
    locked_until = now() + make_interval(secs => %(lease)s::float8),
    started_at = now(),
    progress = NULL,  -- a new attempt: the last one's progress says nothing of it
    -- An enqueue that left max_attempts unset left it to the worker: the
    -- task's declaration here, else this worker app's default. Written into the
    -- row now, so the retries, the leader's rescue of a crashed attempt and the
    -- dead job all count against the number this attempt ran under.
    max_attempts = coalesce(j.max_attempts,
                            (SELECT t.attempts
                             FROM unnest(%(task_names)s::text[], %(task_attempts)s::integer[])
                                  AS t(name, attempts)
                             WHERE t.name = j.task),
                            %(default_attempts)s::integer)
-- "= ANY(ARRAY(subquery))" rather than a join with picked: it keeps the
-- update on jobs_pkey even in a generic (prepared) plan, where a join may
-- become a hash join over a scan of jobs.
WHERE j.id = ANY(ARRAY(SELECT id FROM picked
                       WHERE lock_key IS NULL OR id IN (SELECT job_id FROM locked)))
RETURNING j.id, j.queue, j.task, j.args, j.attempts, j.max_attempts, j.priority,
          j.run_at, j.created_at, j.lock_key, j.correlation_id, j.cancel_requested,
          j.workflow_id,
          -- A workflow node's inputs (ctx.parent_results), in order, with the claim
          -- (no round trip more); never looked up for a plain job.
          CASE WHEN j.workflow_id IS NOT NULL THEN
              (SELECT array_agg(d.result ORDER BY d.position) FROM {schema}.job_deps AS d
               WHERE d.job_id = j.id)
          END AS parent_results,
          j.trace_context, j.replay_of, j.version

-- name: claim
-- The fetcher's claim. Each queue's head is read from jobs_ready_idx with
-- queue = <one name> (an equality on the leading column lets Postgres read the
-- index in (priority, run_at, id) order and stop after the queue's limit),
-- then the heads are merged: by the queues' rank when the worker weights its
-- queues, else by priority, run_at, id across all of them. limits[i] is what
-- queue i may give (fleet-wide limits make it smaller than limit).
--
-- after_*[i] is where queue i's scan starts: past the last job this worker
-- claimed from it, in the index's order. A deleted (acked) job leaves its index
-- entry behind until vacuum removes it, and vacuum may not while any snapshot
-- older than the delete is open (a long transaction elsewhere): a scan from the
-- head of the index then walks every job finished since, and each claim gets
-- slower with each job done. Starting past them is an index condition (a row
-- comparison on the index's own columns), so the walk is skipped. Jobs that
-- land before the start (a retry of higher priority, a released job) are found
-- by the claims that start at the head: every few claims, and whenever a
-- bounded claim comes back short (see worker/claimer.py). (-32768,
-- '-infinity', 0) starts at the head.
WITH picked AS (
    SELECT ready.id, ready.lock_key
    FROM unnest(%(queues)s::text[], %(limits)s::integer[], %(after_priorities)s::smallint[],
                %(after_run_ats)s::timestamptz[], %(after_ids)s::bigint[]) WITH ORDINALITY
         AS q(name, qlimit, after_priority, after_run_at, after_id, rank)
    CROSS JOIN LATERAL (
        SELECT id, priority, run_at, lock_key FROM {schema}.jobs AS c
        WHERE queue = q.name AND state = 'queued' AND run_at <= now()
          AND (priority, run_at, id) > (q.after_priority, q.after_run_at, q.after_id)
          -- Jobs whose lock key is held would only fill the batch for
          -- claim_tail to turn away, and block the jobs queued behind them.
          AND (c.lock_key IS NULL OR NOT EXISTS (
                   SELECT 1 FROM {schema}.job_locks AS l WHERE l.lock_key = c.lock_key))
        ORDER BY priority, run_at, id
        LIMIT q.qlimit
        FOR UPDATE SKIP LOCKED
    ) AS ready
    ORDER BY CASE WHEN %(ranked)s::boolean THEN q.rank END, ready.priority, ready.run_at,
             ready.id
    LIMIT %(limit)s
), {claim_tail};

-- name: claim_oldest
-- The same, oldest ready jobs first whatever their priority (jobs_oldest_idx):
-- taken every few claims so that low-priority work is never starved.
WITH picked AS (
    SELECT ready.id, ready.lock_key
    FROM unnest(%(queues)s::text[], %(limits)s::integer[]) WITH ORDINALITY
         AS q(name, qlimit, rank)
    CROSS JOIN LATERAL (
        SELECT id, run_at, lock_key FROM {schema}.jobs AS c
        WHERE queue = q.name AND state = 'queued' AND run_at <= now()
          AND (c.lock_key IS NULL OR NOT EXISTS (
                   SELECT 1 FROM {schema}.job_locks AS l WHERE l.lock_key = c.lock_key))
        ORDER BY run_at, id
        LIMIT q.qlimit
        FOR UPDATE SKIP LOCKED
    ) AS ready
    ORDER BY CASE WHEN %(ranked)s::boolean THEN q.rank END, ready.run_at, ready.id
    LIMIT %(limit)s
), {claim_tail};

-- name: release_locks
-- Lock keys of jobs that finished (acks) or went back to the queue. Not the
-- key of a job that another worker runs now (we lost its lease and it was
-- claimed again): that key is the other worker's.
DELETE FROM {schema}.job_locks AS l
WHERE l.job_id = ANY(%(ids)s::bigint[])
  AND NOT EXISTS (SELECT 1 FROM {schema}.jobs AS j
                  WHERE j.id = l.job_id AND j.state = 'running'
                    AND j.locked_by IS DISTINCT FROM %(worker_id)s);

-- name: sweep_locks
-- Lock keys whose job is no longer running (a crashed worker's, a rescued
-- job's): the leader clears them so the key's next job can run.
DELETE FROM {schema}.job_locks AS l
WHERE NOT EXISTS (SELECT 1 FROM {schema}.jobs AS j
                  WHERE j.id = l.job_id AND j.state = 'running');

-- ==== workflows ====

-- name: insert_workflow
-- A whole workflow in one statement (one round trip, atomic in the caller's
-- transaction): the workflow row, its nodes (ids drawn first, so that edges can
-- name them), its edges, one NOTIFY per queue with a node ready now.
WITH wf AS (
    INSERT INTO {schema}.workflows (nodes, correlation_id)
    VALUES (%(n)s, %(correlation_id)s::text)
    RETURNING id
), ids AS (
    SELECT g.ord, nextval(pg_get_serial_sequence(%(table)s, 'id')) AS id
    FROM generate_series(1, %(n)s) AS g(ord)
), job AS (
    INSERT INTO {schema}.jobs (id, queue, task, args, priority, max_attempts, state, waiting,
                               workflow_id, correlation_id, lock_key, trace_context, version)
    OVERRIDING SYSTEM VALUE
    SELECT ids.id, u.queue, u.task, u.args, u.priority, u.max_attempts,
           CASE WHEN u.waiting > 0 THEN 'waiting' ELSE 'queued' END, u.waiting, wf.id,
           %(correlation_id)s::text, u.lock_key, %(trace_context)s::jsonb, u.version
    FROM unnest(%(queues)s::text[], %(tasks)s::text[], %(args)s::jsonb[],
                %(priorities)s::smallint[], %(max_attempts)s::integer[], %(waiting)s::integer[],
                %(lock_keys)s::text[], %(versions)s::integer[])
         WITH ORDINALITY AS u(queue, task, args, priority, max_attempts, waiting, lock_key,
                              version, ord)
    JOIN ids ON ids.ord = u.ord
    CROSS JOIN wf
    RETURNING id
), edge AS (
    INSERT INTO {schema}.job_deps (job_id, position, depends_on)
    SELECT a.id, e.position, b.id
    FROM unnest(%(edge_nodes)s::integer[], %(edge_deps)s::integer[],
                %(edge_positions)s::integer[]) AS e(node, dep, position)
    JOIN ids AS a ON a.ord = e.node
    JOIN ids AS b ON b.ord = e.dep
), notified AS (
    -- From the input, not RETURNING: a producer role may not read jobs' state.
    -- Delivered at COMMIT, so only if the nodes commit too.
    SELECT count(pg_notify(%(channel)s, q.queue)) AS n
    FROM (SELECT DISTINCT r.queue
          FROM unnest(%(queues)s::text[], %(waiting)s::integer[]) AS r(queue, waiting)
          WHERE r.waiting = 0) AS q
)
SELECT wf.id, ARRAY(SELECT id FROM ids ORDER BY ord) AS ids
FROM wf CROSS JOIN notified CROSS JOIN (SELECT count(*) FROM job) AS inserted;

-- name: reserve_workflow
-- A large workflow by COPY (see db/workflows.py), step 1 of 3: the workflow
-- row, its nodes' ids drawn in order, and one NOTIFY per queue with a node
-- ready now (delivered at COMMIT, so only if the COPYs that follow commit too).
WITH wf AS (
    INSERT INTO {schema}.workflows (nodes, correlation_id)
    VALUES (%(n)s, %(correlation_id)s::text)
    RETURNING id
), notified AS (
    SELECT count(pg_notify(%(channel)s, q)) AS n FROM unnest(%(ready_queues)s::text[]) AS q
)
SELECT wf.id,
       ARRAY(SELECT nextval(pg_get_serial_sequence(%(table)s, 'id'))
             FROM generate_series(1, %(n)s)) AS ids
FROM wf CROSS JOIN notified;

-- name: copy_workflow_jobs
-- Step 2: the nodes, in COPY's text format.
COPY {schema}.jobs (id, queue, task, args, priority, max_attempts, state, waiting, workflow_id,
                    correlation_id, lock_key, trace_context, version)
FROM STDIN;

-- name: copy_workflow_edges
-- Step 3: the edges.
COPY {schema}.job_deps (job_id, position, depends_on) FROM STDIN;

-- name: workflow_replayed
-- After a replay of dead workflow nodes (old dead id -> new job id): the new
-- job takes the old one's place in its workflow (its edges, both ways), so
-- the nodes waiting for it wait for the new job. Returns the workflows touched.
WITH pairs AS (
    SELECT p.old_id, p.new_id, d.workflow_id
    FROM unnest(%(old_ids)s::bigint[], %(new_ids)s::bigint[]) AS p(old_id, new_id)
    JOIN {schema}.dead_jobs AS d ON d.id = p.old_id
    WHERE d.workflow_id IS NOT NULL
), node AS (
    UPDATE {schema}.jobs AS j SET workflow_id = p.workflow_id
    FROM pairs AS p WHERE j.id = p.new_id
    RETURNING j.id
), inputs AS (
    UPDATE {schema}.job_deps AS e SET job_id = p.new_id
    FROM pairs AS p WHERE e.job_id = p.old_id
    RETURNING e.job_id
), outputs AS (
    UPDATE {schema}.job_deps AS e SET depends_on = p.new_id
    FROM pairs AS p WHERE e.depends_on = p.old_id
    RETURNING e.job_id
)
SELECT DISTINCT workflow_id FROM pairs;

-- name: workflow_revive
-- One step of reviving a workflow after a replay: the nodes that died of a
-- dependency (dependency_failed) and now have every dependency either done or
-- live come back as waiting nodes, with their ids. Run until it revives none:
-- a node behind another dead branch stays dead.
WITH cand AS (
    SELECT d.id FROM {schema}.dead_jobs AS d
    WHERE d.workflow_id = ANY(%(workflows)s::bigint[]) AND d.reason = 'dependency_failed'
      AND d.replayed_at IS NULL
      AND NOT EXISTS (
          SELECT 1 FROM {schema}.job_deps AS e
          WHERE e.job_id = d.id AND NOT e.done
            AND NOT EXISTS (SELECT 1 FROM {schema}.jobs AS j WHERE j.id = e.depends_on))
), moved AS (
    DELETE FROM {schema}.dead_jobs AS d USING cand WHERE d.id = cand.id
    RETURNING d.*
)
INSERT INTO {schema}.jobs (id, queue, task, args, priority, run_at, max_attempts, unique_key,
                           cron_name, replay_of, created_at, lock_key, correlation_id,
                           workflow_id, errors, state, waiting, trace_context, version)
OVERRIDING SYSTEM VALUE
SELECT m.id, m.queue, m.task, m.args, m.priority, now(), m.max_attempts, m.unique_key,
       m.cron_name, m.replay_of, m.created_at, m.lock_key, m.correlation_id, m.workflow_id,
       m.errors, 'waiting',
       (SELECT count(*) FROM {schema}.job_deps AS e WHERE e.job_id = m.id AND NOT e.done),
       m.trace_context, m.version
FROM moved AS m
RETURNING id;

-- name: workflow_doomed_by
-- What a replay of these dead nodes would revive (for --dry-run): the nodes
-- downstream of them that died of a dependency.
WITH RECURSIVE down(id) AS (
    SELECT e.job_id FROM {schema}.job_deps AS e WHERE e.depends_on = ANY(%(ids)s::bigint[])
    UNION
    SELECT e.job_id FROM {schema}.job_deps AS e JOIN down ON e.depends_on = down.id
)
SELECT d.id FROM {schema}.dead_jobs AS d JOIN down USING (id)
WHERE d.reason = 'dependency_failed' AND d.replayed_at IS NULL
ORDER BY d.id;

-- name: workflow_nodes
-- Every node of a workflow wherever it is (live, dead or in history), with
-- the nodes it depends on, in order.
SELECT n.id, n.task, n.queue, n.state, n.attempts, n.result, n.error, n.reason,
       coalesce((SELECT array_agg(d.depends_on ORDER BY d.position)
                 FROM {schema}.job_deps AS d WHERE d.job_id = n.id), '{{}}') AS depends_on
FROM (
    SELECT id, task, queue, state, attempts, NULL::jsonb AS result,
           errors -> -1 ->> 'message' AS error, NULL::text AS reason
    FROM {schema}.jobs WHERE workflow_id = %(id)s
    UNION ALL
    SELECT id, task, queue, 'succeeded', attempts, result, NULL, NULL
    FROM {schema}.job_history WHERE workflow_id = %(id)s
    UNION ALL
    SELECT id, task, queue, CASE WHEN reason = 'cancelled' THEN 'cancelled' ELSE 'dead' END,
           attempts, NULL, errors -> -1 ->> 'message', reason
    FROM {schema}.dead_jobs WHERE workflow_id = %(id)s AND replayed_at IS NULL
) AS n
ORDER BY n.id;

-- name: workflow_list
-- The newest workflows, with how many nodes are where.
SELECT w.id, w.nodes, w.created_at, w.correlation_id,
       (SELECT count(*) FROM {schema}.jobs AS j WHERE j.workflow_id = w.id) AS live,
       (SELECT count(*) FROM {schema}.job_history AS h WHERE h.workflow_id = w.id) AS succeeded,
       (SELECT count(*) FROM {schema}.dead_jobs AS d
        WHERE d.workflow_id = w.id AND d.replayed_at IS NULL) AS dead
FROM {schema}.workflows AS w
ORDER BY w.id DESC
LIMIT %(limit)s;

-- ==== results, history and progress ====

-- name: record_progress
-- The worker's throttled write of ctx.progress(): the latest value of each
-- running attempt ({{id: [attempt, progress]}}, see ack_succeeded), guarded like
-- an ack, announced to those who wait.
WITH done AS (
    UPDATE {schema}.jobs AS j SET progress = %(per_job)s::jsonb -> j.id::text -> 1
    WHERE j.id = ANY(%(ids)s::bigint[]) AND j.locked_by = %(worker_id)s
      AND j.attempts = (%(per_job)s::jsonb -> j.id::text ->> 0)::integer
    RETURNING j.id, j.awaited
), {notify_awaited}
SELECT n FROM notified;

-- name: mark_awaited
-- A waiter (app.result) asks to be told when this job finishes. Written only
-- once per job; a job already gone changes nothing (the waiter then reads
-- where it went).
UPDATE {schema}.jobs SET awaited = true WHERE id = %(id)s AND NOT awaited;

-- name: fragment_live_job
-- A live job as JobInfo describes it (the row of job_info for the jobs table).
SELECT id, task, queue,
       CASE WHEN state IN ('running', 'waiting') THEN state
            WHEN run_at > now() THEN 'scheduled' ELSE 'queued' END AS state,
       args, attempts, max_attempts, priority, errors, NULL::jsonb AS result, progress,
       correlation_id, created_at, run_at, started_at, NULL::timestamptz AS finished_at,
       locked_by AS worker, NULL::text AS reason, NULL::bigint AS replayed_as,
       NULL::timestamptz AS expires_at, workflow_id, version
FROM {schema}.jobs

-- name: job_info
-- A job wherever it is: live, dead or in history. One statement has one
-- snapshot, so a job moving between tables is seen in exactly one of them.
{live_job} WHERE id = %(id)s
UNION ALL
SELECT id, task, queue, 'succeeded', args, attempts, max_attempts, priority, errors, result,
       progress, correlation_id, created_at, NULL, started_at, finished_at, worker, NULL, NULL,
       expires_at, workflow_id, version
FROM {schema}.job_history WHERE id = %(id)s AND expires_at > now()
UNION ALL
SELECT id, task, queue, CASE WHEN reason = 'cancelled' THEN 'cancelled' ELSE 'dead' END,
       args, attempts, max_attempts, priority, errors, NULL, progress, correlation_id,
       created_at, run_at, started_at, died_at, errors -> -1 ->> 'worker', reason, replayed_as,
       NULL, workflow_id, version
FROM {schema}.dead_jobs WHERE id = %(id)s
LIMIT 1;

-- name: history_list
-- Newest first, by the finished_at index (partitions outside the window pruned).
SELECT id, task, queue, attempts, worker, created_at, started_at, finished_at,
       result IS NOT NULL AS has_result, correlation_id
FROM {schema}.job_history
WHERE expires_at > now()
  AND (%(task)s::text IS NULL OR task = %(task)s::text)
  AND (%(since)s::timestamptz IS NULL OR finished_at >= %(since)s::timestamptz)
ORDER BY finished_at DESC, id DESC
LIMIT %(limit)s;

-- name: running_jobs
-- Running jobs, longest-running first, by the running rows' partial index.
SELECT id, task, queue, locked_by AS worker, attempts, started_at, progress
FROM {schema}.jobs
WHERE state = 'running' AND locked_by IS NOT NULL
ORDER BY started_at NULLS LAST, id
LIMIT %(limit)s;

-- name: maintain_history
-- The leader's history round (see maintain_history in the schema): partitions
-- made ahead, expired ones dropped.
SELECT {schema}.maintain_history() AS dropped;

-- name: grant_schema_usage
-- Least privilege (jobqueue migrate --grant-producer/--grant-worker ROLE):
-- neither role may create, alter, drop or truncate anything; the schema's
-- owner (the role that migrates) keeps those.
GRANT USAGE ON SCHEMA {schema} TO {role};

-- name: grant_producer
-- Enqueue: insert jobs, and read back what the insert statements return and
-- what unique_key needs (its conflict target and lookup). No other column of
-- jobs (not the args), and nothing of dead_jobs, workers or cron: reading
-- outcomes is grant_results.
GRANT INSERT, SELECT (id, queue, run_at, unique_key) ON {schema}.jobs TO {role};

-- name: grant_job_ids
-- enqueue_many by COPY draws its ids from the jobs' identity sequence.
GRANT USAGE ON SEQUENCE {schema}.jobs_id_seq TO {role};

-- name: grant_worker
-- Claiming, acking, retries, dead-lettering, heartbeats, lock keys, rate
-- windows, outcome counters and the leader's duties (rescue, reaping, cron).
GRANT SELECT, INSERT, UPDATE, DELETE
    ON {schema}.jobs, {schema}.dead_jobs, {schema}.workers, {schema}.cron,
       {schema}.job_locks, {schema}.queue_windows, {schema}.job_counts
    TO {role};

-- name: grant_producer_workflows
-- enqueue_workflow: the workflow row (and its id), its nodes' edges.
GRANT INSERT ON {schema}.workflows, {schema}.job_deps TO {role};
GRANT USAGE ON SEQUENCE {schema}.workflows_id_seq TO {role};

-- name: grant_worker_workflows
-- Acks advance workflow nodes (edges, waiting counts); the leader's rescue and
-- dead-letters kill what waits downstream.
GRANT SELECT, UPDATE ON {schema}.job_deps TO {role};
GRANT SELECT ON {schema}.workflows TO {role};

-- name: grant_results_workflows
-- app.workflow() and app.workflows().
GRANT SELECT ON {schema}.workflows, {schema}.job_deps TO {role};

-- name: grant_worker_reads
-- Pause and limits are the operator's to set; the schema revision is checked at start.
GRANT SELECT ON {schema}.queues, {schema}.jobqueue_alembic_version TO {role};

-- name: grant_worker_history
-- Successes go to history (through the parent table: Postgres checks the
-- parent's privileges only); partitions are made and dropped by
-- maintain_history with the rights of its owner, never the worker's.
GRANT SELECT, INSERT ON {schema}.job_history TO {role};
GRANT SELECT ON {schema}.history_partitions TO {role};
GRANT EXECUTE ON FUNCTION {schema}.maintain_history(timestamptz, integer) TO {role};

-- name: grant_results
-- app.job() and app.result() (jobqueue migrate --grant-results ROLE): read
-- where a job is, args and results included (so not part of the producer's
-- rights), and ask to be told when it finishes (the awaited flag, no other
-- column of jobs).
GRANT SELECT ON {schema}.jobs, {schema}.dead_jobs, {schema}.job_history TO {role};
GRANT UPDATE (awaited) ON {schema}.jobs TO {role};

-- name: live_queues
-- jobqueue.testing's drain: the queues that hold a job to run now or later.
SELECT DISTINCT queue FROM {schema}.jobs WHERE state = 'queued' ORDER BY queue;

-- name: advance_due
-- jobqueue.testing's drain: a retry waiting out its backoff (and, with
-- scheduled, a job deferred by run_at) is made due now, so a test need not
-- sleep through the backoff. Only ever on a test database.
UPDATE {schema}.jobs SET run_at = now()
WHERE state = 'queued' AND run_at > now() AND (attempts > 0 OR %(scheduled)s)
  AND queue = ANY(%(queues)s::text[])
RETURNING id;

-- name: live_jobs
-- jobqueue.testing's enqueued: live jobs (as job_info describes them), filtered;
-- args by containment, so a test names only the keys it cares about.
{live_job}
WHERE (%(task)s::text IS NULL OR task = %(task)s::text)
  AND (%(queue)s::text IS NULL OR queue = %(queue)s::text)
  AND (%(args)s::jsonb IS NULL OR args @> %(args)s::jsonb)
ORDER BY id;

-- name: outcome_series
-- The dashboard's chart: outcomes per minute over the last hour, from the
-- 10-second buckets of job_counts (which keeps an hour). At most 60 x queues
-- buckets per minute are read, whatever the history holds.
SELECT date_bin('1 minute', bucket, timestamptz '1970-01-01 00:00:00+00') AS minute,
       sum(succeeded)::bigint AS succeeded, sum(retried)::bigint AS retried,
       sum(dead)::bigint AS dead
FROM {schema}.job_counts
WHERE bucket >= now() - interval '1 hour'
GROUP BY 1
ORDER BY 1;

-- name: dead_count_capped
-- How many dead jobs a filter selects, counting no further than %(cap)s: a
-- page shows "10,000+" rather than scan a large table to print a number.
SELECT count(*) FROM (SELECT 1 FROM {schema}.dead_jobs WHERE {dead_filter}
                      LIMIT %(cap)s) AS capped;

-- name: worker_inflight
-- The dashboard's workers page: how many jobs each worker holds running now,
-- from the running rows' partial index (as many rows as jobs run).
SELECT locked_by AS worker, count(*) AS running
FROM {schema}.jobs
WHERE state = 'running' AND locked_by IS NOT NULL
GROUP BY locked_by;
