-- jobqueue schema, revision 0005: workflows (chain, group, chord).
-- The schema placeholder is replaced by the quoted schema identifier.

-- A node waiting for its dependencies is a job in state 'waiting': outside the
-- claim's partial indexes (state = 'queued'), so it is never claimable and costs
-- the claim nothing. waiting counts the dependencies not yet succeeded; the ack
-- of the last one (a row lock on this row orders concurrent acks) makes it
-- 'queued', so a chord's callback is released exactly once.
ALTER TABLE {schema}.jobs DROP CONSTRAINT jobs_state_check;
ALTER TABLE {schema}.jobs ADD CONSTRAINT jobs_state_check
    CHECK (state IN ('queued', 'running', 'waiting'));
ALTER TABLE {schema}.jobs
    ADD COLUMN workflow_id bigint,
    ADD COLUMN waiting integer NOT NULL DEFAULT 0;
ALTER TABLE {schema}.dead_jobs ADD COLUMN workflow_id bigint;
ALTER TABLE {schema}.job_history ADD COLUMN workflow_id bigint;

CREATE TABLE {schema}.workflows (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    nodes           integer     NOT NULL,
    correlation_id  text,
    created_at      timestamptz NOT NULL DEFAULT now()
);

-- One row per edge: job_id waits for depends_on; position orders the results
-- the node receives (ctx.parent_results). The ack of depends_on stores its
-- result here, so a node's inputs never depend on history's retention.
CREATE TABLE {schema}.job_deps (
    job_id      bigint  NOT NULL,
    position    integer NOT NULL,
    depends_on  bigint  NOT NULL,
    done        boolean NOT NULL DEFAULT false,
    result      jsonb,
    PRIMARY KEY (job_id, position)
);
CREATE INDEX job_deps_depends_on_idx ON {schema}.job_deps (depends_on);

CREATE INDEX jobs_workflow_idx ON {schema}.jobs (workflow_id) WHERE workflow_id IS NOT NULL;
CREATE INDEX dead_jobs_workflow_idx ON {schema}.dead_jobs (workflow_id)
    WHERE workflow_id IS NOT NULL;
CREATE INDEX job_history_workflow_idx ON {schema}.job_history (workflow_id)
    WHERE workflow_id IS NOT NULL;
