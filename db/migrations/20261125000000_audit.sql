-- The data auditor: full-compare runs split into key-range chunks (resumable chunk by chunk),
-- continuous samples of committed source changes, and every confirmed difference.

CREATE TABLE dmf.audit_runs (
    id             bigserial PRIMARY KEY,
    migration      uuid NOT NULL REFERENCES dmf.migrations(id) ON DELETE CASCADE,
    -- running | clean | mismatch
    status         text NOT NULL DEFAULT 'running',
    -- source WAL position when the run was planned: the results refer to it and later
    source_lsn     text,
    chunks_total   integer NOT NULL DEFAULT 0,
    requested_by   text NOT NULL,
    started_at     timestamptz NOT NULL DEFAULT now(),
    finished_at    timestamptz
);
CREATE INDEX audit_runs_migration_idx ON dmf.audit_runs(migration, id);

CREATE TABLE dmf.audit_chunks (
    run            bigint NOT NULL REFERENCES dmf.audit_runs(id) ON DELETE CASCADE,
    table_name     text NOT NULL,
    chunk          integer NOT NULL,
    -- key-range bounds as text arrays, NULL for open ends
    lo             text[],
    hi             text[],
    -- pending | clean | mismatch | unsettled (rows kept changing; checked again)
    status         text NOT NULL DEFAULT 'pending',
    attempts       integer NOT NULL DEFAULT 0,
    source_rows    bigint,
    target_rows    bigint,
    done_at        timestamptz,
    PRIMARY KEY (run, table_name, chunk)
);

CREATE TABLE dmf.audit_samples (
    id             bigserial PRIMARY KEY,
    migration      uuid NOT NULL REFERENCES dmf.migrations(id) ON DELETE CASCADE,
    -- source commit to visible on the target
    window_ms      double precision,
    rows_checked   integer NOT NULL DEFAULT 0,
    -- matched | mismatch | unsettled
    status         text NOT NULL,
    commit_lsn     text NOT NULL,
    at             timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX audit_samples_migration_idx ON dmf.audit_samples(migration, id);

-- Differences: kind is missing_on_target | missing_on_source | value; which run or sample found it.
ALTER TABLE dmf.audit_results
    ADD COLUMN run bigint REFERENCES dmf.audit_runs(id) ON DELETE CASCADE,
    ADD COLUMN table_name text,
    ADD COLUMN key jsonb,
    ADD COLUMN columns text[];
CREATE INDEX audit_results_migration_idx ON dmf.audit_results(migration, id);
