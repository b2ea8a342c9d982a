-- jobqueue schema, revision 0003: a job's max_attempts may be left to its worker.
-- The schema placeholder is replaced by the quoted schema identifier.

-- NULL: the enqueue did not say, so the worker's declaration of the task
-- decides (else the worker app's default). A producer that enqueues by name
-- does not import the task, and its own defaults must not fix what the task's
-- owner declared. The claim writes the worker's number into the row, so that
-- everything after it (retries, the leader's rescue of a crashed attempt, the
-- dead job) counts against the same limit.
ALTER TABLE {schema}.jobs ALTER COLUMN max_attempts DROP NOT NULL,
                          ALTER COLUMN max_attempts DROP DEFAULT;
-- A queued job cancelled before any worker claimed it never had a number.
ALTER TABLE {schema}.dead_jobs ALTER COLUMN max_attempts DROP NOT NULL;
